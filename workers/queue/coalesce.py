"""Group commit for concurrent calls: what many jobs ask at once goes out as one batch.

A consumer runs dozens of jobs at once, and each asks Redis for one small script call at a
time (mark it running, append a chunk, store its end). Sent one by one, each costs a round
trip and its share of redis-py's per-command overhead; sent together, a pipeline of them
costs one round trip. The :class:`Coalescer` collects what is asked during one event-loop
tick, and while a batch is in flight, and runs it as one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Op = TypeVar("Op")
R = TypeVar("R")

# What a batch gives back for each operation: its result, or the exception it raised.
BatchRunner = Callable[[list[Op]], Awaitable[Sequence[R | BaseException]]]


class Coalescer(Generic[Op, R]):
    """Runs the operations of concurrent :meth:`call` s in batches, one batch at a time.

    A call waits for the loop's next tick, so that the calls made in this one join it, or,
    while a batch is in flight, for that batch to end: under load, batches grow by
    themselves (group commit), and a lone call costs one tick. Each operation gets its own
    outcome: its result, the exception the batch gave it, or the exception that failed the
    whole batch (a broken connection), raised in every call of that batch.
    """

    def __init__(self, run_batch: BatchRunner[Op, R], *, max_batch: int) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._waiting: list[tuple[Op, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    async def call(self, op: Op) -> R:
        """Run ``op`` in the next batch; its result, or the exception it raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((op, future))
        if self._flusher is None:
            # A task's first step runs on the next tick: the calls of this one join it.
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                # A caller cancelled before its batch went out: its operation never runs.
                batch = [(op, future) for op, future in batch if not future.done()]
                if batch:
                    await self._run([op for op, _ in batch], [future for _, future in batch])
        finally:
            self._flusher = None

    def _cancel_waiting(self, futures: list[asyncio.Future[R]]) -> None:
        for future in [*futures, *(future for _, future in self._waiting)]:
            future.cancel()
        self._waiting.clear()

    async def _run(self, ops: list[Op], futures: list[asyncio.Future[R]]) -> None:
        self.batches += 1
        self.ops += len(ops)
        try:
            outcomes = await self._run_batch(ops)
        except asyncio.CancelledError:
            # The loop is going away: no caller may wait for a batch that never ends.
            self._cancel_waiting(futures)
            raise
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, outcome in zip(futures, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
