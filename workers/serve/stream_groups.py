"""Grouped handle calls, the replica's side: run the requests of one call side by side.

``stream_many`` (see :mod:`workers.serve.call_groups` for the caller) runs each request's
own stream as a task and sends back what they make as it comes: items that are ready
together travel as one message, so a decode step of many rows, or a no-op model, costs one
message rather than one per row. One request's failure is its own item; cancelling one
request (:meth:`StreamGroups.cancel`) stops its stream only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from schemas import ErrorType
from workers.engine.requests import EngineError, GenerationOutput, TextDelta

log = logging.getLogger(__name__)

Item = TextDelta | GenerationOutput
Batch = list[tuple[int, Item | EngineError]]
# A request's stream posts (index, item); (index, None) says it is over.
_Posted = tuple[int, Item | EngineError | None]
_NO_OUTPUT = "the model's stream ended without an output"


@dataclass
class GroupCounters:
    """How many group calls a replica served, the requests they carried, cancels asked."""

    calls: int = 0
    requests: int = 0
    cancels: int = 0


class StreamGroups:
    """The group calls a replica runs now, by call id, so that one request can be stopped."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[int, asyncio.Task[None]]] = {}
        self.counters = GroupCounters()

    async def run(
        self,
        call_id: str,
        replica: str,
        streams: Sequence[AsyncIterator[Item]],
    ) -> AsyncIterator[str | Batch]:
        """``replica`` first, then batches of ``(index, item)`` of ``streams`` as they come.

        Every request ends with its output or its :class:`EngineError`, unless it was
        cancelled. Leaving early (the caller went away) stops every stream.
        """
        posted: asyncio.Queue[_Posted] = asyncio.Queue()
        tasks = {
            index: asyncio.ensure_future(_pump(index, stream, posted))
            for index, stream in enumerate(streams)
        }
        for index, task in tasks.items():
            # A done callback, not the pump's own finally: a task cancelled before its
            # first step never runs its body, yet it is over.
            task.add_done_callback(functools.partial(_over, posted, index))
        # Registered before the replica's id goes out: a cancel can only follow that.
        self._calls[call_id] = tasks
        self.counters.calls += 1
        self.counters.requests += len(tasks)
        try:
            yield replica
            running = len(tasks)
            while running:
                first = await posted.get()
                # One pass of the loop: the other rows of the same step post theirs.
                await asyncio.sleep(0)
                items = [first, *_drain(posted)]
                running -= sum(1 for _, item in items if item is None)
                batch: Batch = [(index, item) for index, item in items if item is not None]
                if batch:
                    yield batch
        finally:
            self._calls.pop(call_id, None)
            for task in tasks.values():
                task.cancel()

    def cancel(self, call_id: str, index: int) -> bool:
        """Stop request ``index`` of call ``call_id``; ``False`` when it is not running."""
        task = self._calls.get(call_id, {}).get(index)
        if task is None or task.done():
            return False
        self.counters.cancels += 1
        return task.cancel()


def _over(posted: asyncio.Queue[_Posted], index: int, _: object) -> None:
    posted.put_nowait((index, None))


def _drain(posted: asyncio.Queue[_Posted]) -> list[_Posted]:
    items = []
    while not posted.empty():
        items.append(posted.get_nowait())
    return items


async def _pump(index: int, stream: AsyncIterator[Item], posted: asyncio.Queue[_Posted]) -> None:
    """Post one request's items; its failure becomes its last item."""
    try:
        ended = False
        # Read to its end, not left at the output: a cancel lands in the stream's own await
        # and ends it there, which is what stops its row.
        async for item in stream:
            if not ended:
                posted.put_nowait((index, item))
            ended = ended or isinstance(item, GenerationOutput)
        if not ended:
            posted.put_nowait((index, EngineError(ErrorType.INTERNAL, _NO_OUTPUT)))
    except EngineError as exc:
        posted.put_nowait((index, exc))
    except Exception as exc:
        # Its own failure, as the type the consumer retries; the others go on.
        log.warning("request %d of a group call failed: %r", index, exc)
        posted.put_nowait((index, EngineError(ErrorType.INTERNAL, f"{type(exc).__name__}: {exc}")))
