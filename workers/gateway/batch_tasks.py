"""A batch's long work, in the background and in bounded slices: checking and queueing
its lines after ``POST /v1/batches`` answered, and cancelling its jobs.

Each slice handles at most :data:`QUEUE_CHUNK` lines (parsed, queued in one round trip,
appended to the batch's lines in another) and then rests, so that ``/healthz`` and other
keys' requests answer while a 50,000-line batch is queued: a request's every ``await``
would otherwise wait behind a whole slice, as the background task is always ready to run.
Resting a share of each slice's time (:data:`REST_SHARE`) leaves the loop idle most of the
time a request needs, for half as much time again to queue a batch.
Between slices the batch's status is read again: a batch cancelled meanwhile stops
being queued, and what it had queued is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from producer.client import AsyncProducer
from producer.errors import SubmitError
from schemas.batches import Batch, BatchErrorData, BatchErrors, BatchStatus
from workers.gateway.batch_lines import LineParser, LineRules, ParsedLine
from workers.gateway.batch_store import BatchStore
from workers.gateway.jsonl_bounds import numbered_lines

log = logging.getLogger(__name__)

# Lines parsed and queued per slice (about 10 ms of work on a small core).
QUEUE_CHUNK = 50
# How long a queuer's claim holds without a slice done: past it (its replica died), the
# next read of the batch checks and queues its lines again (queueing a line twice queues
# nothing: its job id is fixed).
QUEUE_LEASE_S = 30
# The rest after each slice of background work, as a share of the time the slice took.
REST_SHARE = 0.5


class Pace:
    """Rests after each slice of background work in proportion to its time (see above)."""

    def __init__(self) -> None:
        self._began = time.monotonic()

    async def rest(self) -> None:
        """End a slice: rest :data:`REST_SHARE` of its time, and start the next."""
        await asyncio.sleep((time.monotonic() - self._began) * REST_SHARE)
        self._began = time.monotonic()


class BatchTasks:
    """The background tasks of one gateway replica; they hold no request open."""

    def __init__(self, store: BatchStore, producer: AsyncProducer, *, ttl_s: int) -> None:
        self.store = store
        self.producer = producer
        self.ttl_s = ttl_s
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, batch_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` for the batch in the background (errors are logged)."""
        task = asyncio.create_task(work)
        self._running[batch_id] = task
        task.add_done_callback(lambda done: self._done(batch_id, done))

    def _done(self, batch_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(batch_id) is task:
            del self._running[batch_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("batch %s: background work failed", batch_id, exc_info=task.exception())

    async def settled(self, batch_id: str) -> None:
        """Wait for the batch's background work on this replica, if any, to end."""
        task = self._running.get(batch_id)
        if task is not None:
            await asyncio.wait([task])

    async def queue(
        self, batch: Batch, owner: str | None, content: bytes, rules: LineRules
    ) -> None:
        """Check every line, queue the good ones, then move the batch to ``in_progress``
        (or ``failed`` when the queue refused jobs). The caller claimed the queuer's
        lease; it is renewed at each slice and released at the end."""
        try:
            await self._queue_all(batch, owner, content, rules)
        finally:
            await self.store.release(batch.id, "queue")

    async def _queue_all(
        self, batch: Batch, owner: str | None, content: bytes, rules: LineRules
    ) -> None:
        parser = LineParser(batch.id, rules)
        pace = Pace()
        chunk: list[ParsedLine] = []
        failed = 0
        for number, raw in numbered_lines(content):
            chunk.append(parser.parse(number, raw))
            if len(chunk) == QUEUE_CHUNK:
                await pace.rest()  # the slice boundary: other requests run here
                if not await self._queue_chunk(batch, owner, chunk):
                    return
                failed += sum(line.job is None for line in chunk)
                chunk = []
        if chunk and not await self._queue_chunk(batch, owner, chunk):
            return
        failed += sum(line.job is None for line in chunk)
        done = batch.model_copy(deep=True)
        done.status, done.in_progress_at = BatchStatus.IN_PROGRESS, int(time.time())
        done.request_counts.failed = failed
        if not await self.store.update_batch(done, allowed_from=[BatchStatus.VALIDATING]):
            await self.cancel(batch.id)  # cancelled while its last lines were queued

    async def _queue_chunk(self, batch: Batch, owner: str | None, chunk: list[ParsedLine]) -> bool:
        """Queue one slice of lines; whether to go on (the batch is still validating)."""
        if await self.store.queue_turn(batch.id, QUEUE_LEASE_S) is not BatchStatus.VALIDATING:
            await self.cancel(batch.id)
            return False
        jobs = [line.job for line in chunk if line.job is not None]
        try:
            if jobs:
                # A batch is not refused for its tenant's rate: the workers hold its
                # lines back at that rate instead.
                await self.producer.submit_many(jobs, owner=owner, limit_rate=False)
        except SubmitError as exc:
            await self.fail(batch, str(exc))
            return False
        finally:
            # Appended even when refused: the lines that went in are cancelled with the rest.
            await self.store.append_lines(
                batch.id, [line.stored() for line in chunk], ttl_s=self.ttl_s
            )
        return True

    async def fail(self, batch: Batch, message: str) -> None:
        """End a batch still validating ``failed`` with ``message``, cancelling what it queued."""
        failed = batch.model_copy(deep=True)
        failed.status, failed.failed_at = BatchStatus.FAILED, int(time.time())
        failed.errors = BatchErrors(data=[BatchErrorData(code="queue_refused", message=message)])
        await self.store.update_batch(failed, allowed_from=[BatchStatus.VALIDATING])
        await self.cancel(batch.id)

    async def cancel(self, batch_id: str) -> None:
        """Cancel every queued job of the batch, a slice of its lines at a time: jobs not
        started end ``cancelled`` without running, running ones stop at their next step."""
        pace = Pace()
        async for lines in self.store.line_slices(batch_id):
            await self.producer.cancel_many([line.job_id for line in lines if line.job_id])
            await pace.rest()
