"""``multipart/form-data`` bodies, read with the standard library's MIME parser.

The gateway takes one kind of upload (``POST /v1/files``) and its body is already whole
and bounded by :class:`~workers.gateway.limits.BodySizeLimit`, so a streaming parser
(and a dependency for it) buys nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import HTTP

from workers.gateway.errors import ApiError


@dataclass(frozen=True)
class FormPart:
    """One field of a form: its value, and its file name when it is a file."""

    value: bytes
    filename: str | None


def parse_form(content_type: str, body: bytes) -> dict[str, FormPart]:
    """The fields of a ``multipart/form-data`` body by name (the first of a repeated
    name); 400 when the body is not one."""
    if (
        not content_type.lower().startswith("multipart/form-data")
        or "boundary=" not in content_type
    ):
        raise ApiError(
            400, "validation", "send the file as multipart/form-data (fields: file, purpose)"
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart() or message.defects:
        raise ApiError(400, "validation", "the multipart/form-data body is malformed")
    fields: dict[str, FormPart] = {}
    for part in message.iter_parts():
        name = _param(part, "name")
        if name is not None and name not in fields:
            payload = part.get_payload(decode=True)
            value = payload if isinstance(payload, bytes) else b""
            fields[name] = FormPart(value, part.get_filename())
    return fields


def _param(part: Message, key: str) -> str | None:
    value = part.get_param(key, header="content-disposition")
    return value if isinstance(value, str) else None
