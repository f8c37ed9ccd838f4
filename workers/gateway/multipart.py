"""``multipart/form-data`` bodies, parsed as they arrive and bounded at every step.

The gateway takes one kind of upload (``POST /v1/files``: one file part, a few short
fields). :class:`FormReader` is fed the body piece by piece; each piece costs work in
proportion to its size (``bytes.find`` for the boundary), and the first bound crossed
(parts, header size, field size, file name length, a second file, a nested multipart
part) raises a 400 at once, so a hostile form is refused after the part that broke the
rule, not after the whole body was read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import HTTP

from workers.gateway.errors import ApiError

# Parts of one form: file and purpose, and room for a client's extra fields.
MAX_FORM_PARTS = 8
# The header block of one part (Content-Disposition, Content-Type).
MAX_PART_HEADER_BYTES = 8 * 1024
# A field that is not a file (``purpose``).
MAX_FIELD_BYTES = 1024
# A file's name, as OpenAI's file objects echo it back on every read.
MAX_FILENAME_CHARS = 255
_HEADER_END = b"\r\n\r\n"


def _invalid(message: str) -> ApiError:
    return ApiError(400, "validation", message)


@dataclass
class FormReader:
    """A ``multipart/form-data`` body fed in pieces. The file part's bytes go to
    ``on_file`` as they arrive; other fields are kept (:attr:`fields`)."""

    boundary: bytes
    on_file: Callable[[bytes], None]
    fields: dict[str, bytes] = field(default_factory=dict)
    filename: str | None = None
    parts: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    # preamble → after_delimiter → headers → body → after_delimiter → ... → done
    _state: str = "preamble"
    _field: str | None = None  # the field whose value is arriving (None: the file)

    @classmethod
    def for_content_type(cls, content_type: str, on_file: Callable[[bytes], None]) -> FormReader:
        """A reader for a body of ``content_type``; 400 when it is not a form."""
        head = _headers(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace"))
        boundary = head.get_param("boundary")
        if head.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
            raise _invalid("send the file as multipart/form-data (fields: file, purpose)")
        if not 0 < len(boundary) <= 70:
            raise _invalid("the multipart boundary must be 1 to 70 characters")
        return cls(boundary=boundary.encode("latin-1", "replace"), on_file=on_file)

    def feed(self, data: bytes) -> None:
        """Parse what ``data`` completes; 400 at the first bound it crosses."""
        self._buffer += data
        while self._step():
            pass

    def finish(self) -> None:
        """The body is whole: 400 unless the form ended with its closing boundary."""
        if self._state != "done":
            raise _invalid("the multipart/form-data body is malformed (it ends mid-form)")

    def _step(self) -> bool:
        """Handle what the buffer holds for the current state; whether to go on."""
        if self._state == "preamble":
            return self._preamble()
        if self._state == "headers":
            return self._headers()
        if self._state == "body":
            return self._body()
        if self._state == "after_delimiter":
            return self._after_delimiter()
        self._buffer.clear()  # the epilogue after the closing boundary is ignored
        return False

    def _preamble(self) -> bool:
        start = self._buffer.find(b"--" + self.boundary)
        if start < 0:
            if len(self._buffer) > MAX_PART_HEADER_BYTES:
                raise _invalid("the multipart/form-data body does not start with its boundary")
            return False
        del self._buffer[: start + len(self.boundary) + 2]
        self._state = "after_delimiter"
        return self._after_delimiter()

    def _after_delimiter(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] == b"--":
            self._state = "done"
            return True
        if self._buffer[:2] != b"\r\n":
            raise _invalid("the multipart/form-data body is malformed (bad boundary line)")
        del self._buffer[:2]
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise _invalid(f"the form has more than {MAX_FORM_PARTS} parts")
        self._state = "headers"
        return True

    def _headers(self) -> bool:
        end = self._buffer.find(_HEADER_END, 0, MAX_PART_HEADER_BYTES + 4)
        if end < 0:
            if len(self._buffer) > MAX_PART_HEADER_BYTES:
                raise _invalid(f"a form part's headers are over {MAX_PART_HEADER_BYTES} bytes")
            return False
        head = _headers(bytes(self._buffer[: end + 4]))
        del self._buffer[: end + 4]
        self._start_part(head)
        self._state = "body"
        return True

    def _start_part(self, head: Message) -> None:
        if head.get_content_maintype() == "multipart":
            raise _invalid("a form part may not itself be multipart (nested forms are refused)")
        name = head.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise _invalid("a form part has no name (Content-Disposition: form-data; name=...)")
        filename = head.get_filename()
        if filename is None:
            if name in self.fields:
                raise _invalid(f"the form repeats the field {name[:64]!r}")
            self.fields[name], self._field = b"", name
            return
        if self.filename is not None:
            raise _invalid("the form has more than one file; send one file per upload")
        if len(filename) > MAX_FILENAME_CHARS:
            raise _invalid(f"the file name is over {MAX_FILENAME_CHARS} characters")
        self.filename, self._field = filename, None

    def _body(self) -> bool:
        delimiter = b"\r\n--" + self.boundary
        end = self._buffer.find(delimiter)
        if end < 0:
            # All but what may be the start of a delimiter split over two pieces.
            keep = len(delimiter) - 1
            if len(self._buffer) > keep:
                self._take(bytes(self._buffer[:-keep]))
                del self._buffer[:-keep]
            return False
        self._take(bytes(self._buffer[:end]))
        del self._buffer[: end + len(delimiter)]
        self._state = "after_delimiter"
        return self._after_delimiter()

    def _take(self, data: bytes) -> None:
        if self._field is None:
            self.on_file(data)
            return
        value = self.fields[self._field] + data
        if len(value) > MAX_FIELD_BYTES:
            raise _invalid(f"the form field {self._field[:64]!r} is over {MAX_FIELD_BYTES} bytes")
        self.fields[self._field] = value


def _headers(block: bytes) -> Message:
    return BytesHeaderParser(policy=HTTP).parsebytes(block)
