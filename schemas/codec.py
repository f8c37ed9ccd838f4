"""JSON encoding for the wire: orjson, and Redis replies decoded to ``str``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


def dumps(value: Any) -> str:
    """Encode ``value`` as compact JSON text (pydantic models via ``model_dump``)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", exclude_none=True)
    return orjson.dumps(value).decode()


def loads(data: str | bytes) -> Any:
    """Decode JSON text; raises :class:`orjson.JSONDecodeError` (a ``ValueError``)."""
    return orjson.loads(data)


def as_text(value: str | bytes) -> str:
    """A Redis reply value as text (replies are bytes unless decode_responses is on)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def decode_fields(fields: Mapping[Any, Any]) -> dict[str, str]:
    """A hash or stream entry's fields with keys and values as text."""
    return {as_text(k): as_text(v) for k, v in fields.items()}
