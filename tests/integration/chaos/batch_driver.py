"""The gateway's batch service, driven directly on a chaos app's prefix.

The chaos apps have no gateway; what a batch adds to the queue is all in
:class:`~workers.gateway.batches.BatchService` (lines onto jobs, counts and status from
the jobs, output and error files), so the scenario calls it as the routes do, with the
producer they use, minus HTTP. It runs on an event loop of its own, kept across calls
(the producer's connections belong to it), so the sync helpers of the chaos app keep
working beside it.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from schemas.batches import Batch, BatchCreate, BatchOutputLine
from workers.gateway.auth import ANYONE
from workers.gateway.batches import BatchService
from workers.gateway.services import queue_producer
from workers.settings import WorkerSettings

POLL_S = 0.5


class BatchDriver:
    """Upload, create and follow batches as an API-keys-off gateway replica does."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._loop = asyncio.Runner()
        self.service = BatchService(settings, queue_producer(settings))

    def __enter__(self) -> BatchDriver:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.run(self.service.producer.aclose())
        self._loop.close()

    def create(self, content: bytes) -> tuple[Batch, dict[str, str]]:
        """Upload ``content`` and start a ``/v1/completions`` batch on it: the batch, and
        the job id of each queued line by ``custom_id``."""

        async def create() -> tuple[Batch, dict[str, str]]:
            uploaded = await self.service.upload("chaos.jsonl", content, owner=None)
            body = BatchCreate(input_file_id=uploaded.id, endpoint="/v1/completions")
            batch = await self.service.create(body, ANYONE)
            # Its lines are queued in the background: the job ids are known once it is done.
            await self.service.tasks.settled(batch.id)
            jobs: dict[str, str] = {}
            async for lines in self.service.store.line_slices(batch.id):
                jobs.update({line.custom_id or "": line.job_id for line in lines if line.job_id})
            return batch, jobs

        return self._loop.run(create())

    def retrieve(self, batch_id: str) -> Batch:
        """The batch as ``GET /v1/batches/{id}`` answers it (counted, finalized once done)."""

        async def retrieve() -> Batch:
            return await self.service.refresh(await self.service.visible_batch(batch_id, ANYONE))

        return self._loop.run(retrieve())

    def run_to_end(self, batch_id: str, timeout_s: float) -> tuple[Batch, list[tuple[int, int]]]:
        """Poll until the batch ends; the batch and the (completed, failed) counts seen."""
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = self.retrieve(batch_id)
            seen.append((batch.request_counts.completed, batch.request_counts.failed))
            if batch.status.is_final:
                return batch, seen
            time.sleep(POLL_S)
        raise AssertionError(f"batch {batch_id} did not end: {seen[-1:]}")

    def lines(self, file_id: str | None) -> list[BatchOutputLine]:
        """The lines of an output or error file (none: no file)."""
        if file_id is None:
            return []
        content = self._loop.run(self.service.store.file_content(file_id)) or b""
        return [BatchOutputLine.model_validate_json(line) for line in content.splitlines()]
