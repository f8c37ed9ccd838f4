"""Server-sent events: the engine's text stream as ``data: {json}`` events, ``[DONE]`` last."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from workers.engine.requests import GenerationOutput, TextDelta
from workers.gateway.errors import ApiError, ErrorDetail, ErrorResponse
from workers.gateway.openai_mapping import StreamFormat

DONE = b"data: [DONE]\n\n"
# No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_data(body: BaseModel) -> bytes:
    """One event carrying ``body`` as JSON."""
    return b"data: " + orjson.dumps(body.model_dump(mode="json")) + b"\n\n"


async def sse_events(
    form: StreamFormat,
    updates: AsyncIterator[TextDelta | GenerationOutput],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The events of one streamed response. A failure after the stream has begun is sent
    as an ``{"error": ...}`` event (the status line is already out), then ``[DONE]``."""
    for chunk in form.opening():
        yield sse_data(chunk)
    try:
        async for update in updates:
            if isinstance(update, TextDelta):
                yield sse_data(form.text(update.text))
            else:
                for chunk in form.closing(update, include_usage=include_usage):
                    yield sse_data(chunk)
    except ApiError as exc:
        yield sse_data(ErrorResponse(error=ErrorDetail(type=exc.type, message=exc.message)))
    yield DONE


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    """A ``text/event-stream`` response sending ``events`` as they come."""
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
