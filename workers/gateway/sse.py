"""Server-sent events: the engine's text streams as ``data: {json}`` events, ``[DONE]`` last."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import orjson
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from workers.engine.requests import GenerationOutput, TextDelta
from workers.gateway.errors import ApiError, ErrorDetail, ErrorResponse
from workers.gateway.openai_mapping import StreamFormat

DONE = b"data: [DONE]\n\n"
# No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
Update = TextDelta | GenerationOutput


def sse_data(body: BaseModel) -> bytes:
    """One event carrying ``body`` as JSON."""
    return b"data: " + orjson.dumps(body.model_dump(mode="json")) + b"\n\n"


async def sse_events(
    form: StreamFormat,
    streams: Sequence[AsyncGenerator[Update, None]],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The events of one streamed response, choice ``i`` fed by ``streams[i]``: each
    choice's chunks in order, the choices' interleaved as they come, the usage summed
    over them last. A failure after the stream has begun is sent as an
    ``{"error": ...}`` event (the status line is already out), then ``[DONE]``."""
    for chunk in form.opening(len(streams)):
        yield sse_data(chunk)
    outputs: list[GenerationOutput] = []
    try:
        # aclosing: this generator closed (the client went away) stops the streams now.
        async with contextlib.aclosing(merged(streams)) as updates:
            async for index, update in updates:
                if isinstance(update, TextDelta):
                    yield sse_data(form.text(index, update))
                else:
                    outputs.append(update)
                    yield sse_data(form.closing(index, update))
        if include_usage:
            yield sse_data(form.usage(outputs))
    except ApiError as exc:
        yield sse_data(ErrorResponse(error=ErrorDetail(type=exc.type, message=exc.message)))
    yield DONE


async def merged(
    streams: Sequence[AsyncGenerator[Update, None]],
) -> AsyncGenerator[tuple[int, Update], None]:
    """``(i, update)`` of every ``streams[i]`` as each comes; the first failure ends it.
    Leaving early (the client went away) stops every stream."""
    if len(streams) == 1:  # no task, no queue: the common case
        async with contextlib.aclosing(streams[0]) as stream:
            async for update in stream:
                yield 0, update
        return
    # (i, None): stream i is over.
    posted: asyncio.Queue[tuple[int, Update | Exception | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[Update, None]) -> None:
        try:
            async for update in stream:
                posted.put_nowait((index, update))
        except Exception as exc:  # handed to the reader, which raises it
            posted.put_nowait((index, exc))
        else:
            posted.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await posted.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()  # a stream's own cleanup stops its generation
        await asyncio.gather(*tasks, return_exceptions=True)


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    """A ``text/event-stream`` response sending ``events`` as they come."""
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
