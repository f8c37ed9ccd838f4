"""Bounds on a JSONL batch file, checked as its bytes arrive: line count and line length.

Pure: no Redis, no HTTP. Each :meth:`LineBounds.feed` does work in proportion to the
bytes it is given, in C-level loops (``split``, ``map``), so a caller that feeds slices of
:data:`SLICE_BYTES` keeps every step short, and the first limit crossed stops the reading.
"""

from __future__ import annotations

from collections.abc import Iterator

# The most bytes one step of a reader handles before it lets other requests run.
SLICE_BYTES = 64 * 1024
# The longest line of a batch file (a request with its messages); longer ones: 400.
MAX_LINE_BYTES = 1024 * 1024


class LineLimitError(ValueError):
    """A file past one of its bounds; the message names the bound and its setting."""


class LineBounds:
    """Counts the non-blank lines of a file fed piece by piece; raises
    :class:`LineLimitError` at the first piece that takes it past ``max_lines`` lines or
    holds a line longer than ``max_line_bytes``."""

    def __init__(self, *, max_lines: int, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_lines = max_lines
        self.max_line_bytes = max_line_bytes
        self.lines = 0
        self._tail = b""  # the line not yet ended by a newline

    def feed(self, data: bytes) -> None:
        """Count the lines that ``data`` ends (the last, unended one waits for more)."""
        pieces = (self._tail + data).split(b"\n")
        self._tail = pieces.pop()
        if len(self._tail) > self.max_line_bytes or (
            pieces and max(map(len, pieces)) > self.max_line_bytes
        ):
            raise LineLimitError(
                f"a line is longer than {self.max_line_bytes} bytes (the most one line may hold)"
            )
        self._count(sum(1 for _ in filter(None, map(bytes.strip, pieces))))

    def finish(self) -> int:
        """The number of non-blank lines, once the whole file was fed."""
        if self._tail.strip():
            self._tail = b""
            self._count(1)
        return self.lines

    def _count(self, more: int) -> None:
        self.lines += more
        if self.lines > self.max_lines:
            raise LineLimitError(
                f"the file has more than {self.max_lines} lines (max_batch_lines); "
                "split it into several batches"
            )


def slices(data: bytes | bytearray | memoryview, size: int = SLICE_BYTES) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


def numbered_lines(content: bytes) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of ``content`` with their 1-based numbers (blank ones count,
    as an editor numbers them), found one at a time: no list of every line is built."""
    number, start = 0, 0
    while start < len(content):
        end = content.find(b"\n", start)
        end = len(content) if end < 0 else end
        number += 1
        raw = content[start:end]
        if raw.strip():
            yield number, raw
        start = end + 1
