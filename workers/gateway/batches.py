"""The Batch API's life cycle over the queue: upload, create, follow, finalize, cancel.

A batch's status follows its jobs: each read counts the jobs that ended (a job's final
status is written once, so the counts only grow) and, once none is left, writes the
output and error files and the final status in one script. Readers may race; the
script lets one of them win.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from producer.client import AsyncProducer
from producer.errors import SubmitError
from schemas import JobStatus
from schemas.batches import (
    COMPLETION_WINDOW_S,
    Batch,
    BatchCreate,
    BatchErrorData,
    BatchErrors,
    BatchList,
    BatchStatus,
    FileObject,
    RequestCounts,
)
from workers.gateway.auth import Caller
from workers.gateway.batch_lines import (
    LineRules,
    ParsedLine,
    StoredLine,
    jsonl,
    parse_lines,
    sort_lines,
)
from workers.gateway.batch_store import BatchStore, NewFile, StoredBatch
from workers.gateway.errors import ApiError
from workers.settings import WorkerSettings

# Cancellations sent at once (each is one small script).
CANCEL_CONCURRENCY = 64
_RUNNING = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)


def not_found(kind: str, ident: str) -> ApiError:
    """404 for an id with nothing under it, or with another key's file or batch under it."""
    return ApiError(404, "not_found", f"{kind} {ident!r} does not exist (or has expired)")


def count_lines(
    lines: Sequence[StoredLine], statuses: Sequence[JobStatus | None]
) -> tuple[RequestCounts, int]:
    """The request counts of a batch and how many of its jobs have not ended. Lines that
    were never queued count as failed; cancelled jobs count as neither."""
    counts = RequestCounts(total=len(lines), failed=sum(line.job_id is None for line in lines))
    pending = 0
    for status in statuses:
        if status is JobStatus.SUCCEEDED:
            counts.completed += 1
        elif status in (JobStatus.FAILED, JobStatus.EXPIRED):
            counts.failed += 1
        elif status is None or not status.is_final:
            pending += 1
    return counts, pending


class BatchService:
    """Files and batches of one gateway replica."""

    def __init__(self, settings: WorkerSettings, producer: AsyncProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.store = BatchStore(producer.client, producer.keys)

    async def upload(self, filename: str, content: bytes, owner: str | None) -> FileObject:
        """Store an input file (``purpose=batch``)."""
        now = int(time.time())
        meta = FileObject(
            id=f"file-{uuid.uuid4().hex}",
            bytes=len(content),
            created_at=now,
            expires_at=now + self.settings.file_ttl_s,
            filename=filename,
            purpose="batch",
        )
        await self.store.put_file(meta, content, owner=owner, ttl_s=self.settings.file_ttl_s)
        return meta

    async def visible_file(self, file_id: str, caller: Caller) -> FileObject:
        """The file, or 404 when there is none or it is another key's."""
        found = await self.store.get_file(file_id)
        if found is None or not caller.may_see(found.owner):
            raise not_found("file", file_id)
        return found.meta

    async def visible_batch(self, batch_id: str, caller: Caller) -> StoredBatch:
        """The batch, or 404 when there is none or it is another key's."""
        found = await self.store.get_batch(batch_id)
        if found is None or not caller.may_see(found.owner):
            raise not_found("batch", batch_id)
        return found

    async def create(self, body: BatchCreate, caller: Caller) -> Batch:
        """Check the input file, queue one job per good line, and start the batch."""
        meta = await self.visible_file(body.input_file_id, caller)
        if meta.purpose != "batch":
            raise ApiError(
                400, "validation", f"file {meta.id!r} has purpose {meta.purpose!r}, not 'batch'"
            )
        content = await self.store.file_content(meta.id) or b""
        now = int(time.time())
        batch = Batch(
            id=f"batch_{uuid.uuid4().hex}",
            endpoint=body.endpoint,
            input_file_id=meta.id,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + COMPLETION_WINDOW_S,
            metadata=body.metadata,
        )
        parsed = self._parse(content, batch)
        lines = [line.stored() for line in parsed]
        batch.request_counts, _ = count_lines(lines, [])
        stored = StoredBatch(batch, caller.owner, lines)
        await self.store.create_batch(stored, ttl_s=self.settings.batch_ttl_s)
        return await self._queue(stored, [line for line in parsed if line.job is not None], caller)

    def _parse(self, content: bytes, batch: Batch) -> list[ParsedLine]:
        rules = LineRules(
            endpoint=batch.endpoint,
            base_model=self.settings.base_model_name,
            max_new_tokens=self.settings.max_new_tokens,
            priority=self.settings.batch_priority,
            deadline=float(batch.expires_at or 0),
            result_ttl_s=self.settings.batch_ttl_s,
        )
        parsed = parse_lines(content, batch.id, rules)
        if not parsed:
            raise ApiError(400, "validation", f"file {batch.input_file_id!r} has no lines")
        if len(parsed) > self.settings.max_batch_lines:
            message = f"the file has {len(parsed)} lines, more than {self.settings.max_batch_lines}"
            raise ApiError(400, "validation", message)
        return parsed

    async def _queue(self, stored: StoredBatch, queued: list[ParsedLine], caller: Caller) -> Batch:
        batch = stored.batch.model_copy(deep=True)
        try:
            await self.producer.submit_many(
                [line.job for line in queued if line.job], owner=caller.owner
            )
        except SubmitError as exc:
            batch.status, batch.failed_at = BatchStatus.FAILED, int(time.time())
            batch.errors = BatchErrors(
                data=[BatchErrorData(code="queue_refused", message=str(exc))]
            )
        else:
            batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS, int(time.time())
        await self.store.update_batch(batch, allowed_from=[BatchStatus.VALIDATING])
        return batch

    async def refresh(self, stored: StoredBatch) -> Batch:
        """The batch with counts and status as its jobs stand; finalized once all ended."""
        batch = stored.batch.model_copy(deep=True)
        if batch.status not in _RUNNING:
            return batch
        job_ids = [line.job_id for line in stored.lines if line.job_id]
        counts, pending = count_lines(stored.lines, await self.store.job_statuses(job_ids))
        batch.request_counts = counts
        if pending:
            if counts != stored.batch.request_counts:
                await self.store.update_batch(batch, allowed_from=[batch.status])
            return batch
        return await self._finalize(stored, batch)

    async def _finalize(self, stored: StoredBatch, batch: Batch) -> Batch:
        now = int(time.time())
        if batch.status is BatchStatus.IN_PROGRESS:
            batch.status, batch.finalizing_at = BatchStatus.FINALIZING, now
            await self.store.update_batch(batch, allowed_from=[BatchStatus.IN_PROGRESS])
        queued = [line.job_id for line in stored.lines if line.job_id]
        ended = sort_lines(stored.lines, await self.store.job_records(queued), batch.endpoint)
        files = []
        for kind, lines in (("output", ended.outputs), ("error", ended.errors)):
            if lines:
                new = self._output_file(batch.id, kind, jsonl(lines))
                files.append(new)
                setattr(batch, f"{kind}_file_id", new.meta.id)
        end_batch(batch, expired=ended.expired, now=int(time.time()))
        moved = await self.store.update_batch(
            batch,
            allowed_from=[BatchStatus.FINALIZING, BatchStatus.CANCELLING],
            owner=stored.owner,
            files=files,
        )
        if not moved:  # another reader finalized it first: its files are the ones
            again = await self.store.get_batch(batch.id)
            return again.batch if again else batch
        return batch

    def _output_file(self, batch_id: str, kind: str, content: bytes) -> NewFile:
        now = int(time.time())
        meta = FileObject(
            id=f"file-{uuid.uuid4().hex}",
            bytes=len(content),
            created_at=now,
            expires_at=now + self.settings.batch_ttl_s,
            filename=f"{batch_id}_{kind}.jsonl",
            purpose="batch_output",
        )
        return NewFile(meta, content)

    async def cancel(self, stored: StoredBatch, caller: Caller) -> Batch:
        """Stop the batch: jobs not started end ``cancelled`` without running, running ones
        stop at their next step; the batch ends ``cancelled`` once none is left."""
        batch = stored.batch.model_copy(deep=True)
        if batch.status.is_final:
            raise ApiError(
                409, "conflict", f"batch {batch.id!r} already ended: {batch.status.value}"
            )
        if batch.status is not BatchStatus.CANCELLING:
            batch.status, batch.cancelling_at = BatchStatus.CANCELLING, int(time.time())
            allowed = [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING]
            if not await self.store.update_batch(batch, allowed_from=allowed):
                return await self.refresh(await self.visible_batch(batch.id, caller))
        job_ids = [line.job_id for line in stored.lines if line.job_id]
        limit = asyncio.Semaphore(CANCEL_CONCURRENCY)

        async def cancel_one(job_id: str) -> None:
            async with limit:
                await self.producer.cancel(job_id)

        await asyncio.gather(*(cancel_one(job_id) for job_id in job_ids))
        return await self.refresh(StoredBatch(batch, stored.owner, stored.lines))

    async def list(self, caller: Caller, *, after: str | None, limit: int) -> BatchList:
        """The caller's batches, newest first, from the one after ``after``."""
        ids = await self.store.batch_ids()
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        found: list[Batch] = []
        expired: list[str] = []
        try:
            for batch_id in ids:
                stored = await self.store.get_batch(batch_id)
                if stored is None:
                    expired.append(batch_id)
                elif caller.may_see(stored.owner):
                    if len(found) == limit:
                        return _page(found, has_more=True)
                    found.append(await self.refresh(stored))
        finally:
            await self.store.forget(expired)
        return _page(found, has_more=False)


def _page(batches: list[Batch], *, has_more: bool) -> BatchList:
    first, last = (batches[0].id, batches[-1].id) if batches else (None, None)
    return BatchList(data=batches, first_id=first, last_id=last, has_more=has_more)


def end_batch(batch: Batch, *, expired: bool, now: int) -> None:
    """The final status of a batch none of whose jobs is left."""
    if batch.status is BatchStatus.CANCELLING:
        batch.status, batch.cancelled_at = BatchStatus.CANCELLED, now
    elif expired and now >= (batch.expires_at or now):
        batch.status, batch.expired_at = BatchStatus.EXPIRED, now
    else:
        batch.status, batch.completed_at = BatchStatus.COMPLETED, now
