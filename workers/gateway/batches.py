"""The Batch API's life cycle over the queue: upload, create, follow, finalize, cancel.

Creating a batch checks only its size in lines before it answers (``validating``); its
lines are checked and queued in the background, in slices (:mod:`batch_tasks`). A
batch's status then follows its jobs: each read counts the jobs that ended (a job's
final status is written once, so the counts only grow), a slice of lines per round
trip, and, once none is left, writes the output and error files and the final status in
one script. Readers may race; the script lets one of them win.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from producer.client import AsyncProducer
from schemas import JobStatus
from schemas.batches import (
    COMPLETION_WINDOW_S,
    Batch,
    BatchCreate,
    BatchList,
    BatchStatus,
    FileObject,
    RequestCounts,
)
from workers.gateway.auth import Caller
from workers.gateway.batch_counts import SliceCount, add_up, slices_to_read
from workers.gateway.batch_lines import LineRules, StoredLine, jsonl, sort_lines
from workers.gateway.batch_store import READ_CHUNK, BatchStore, NewFile, StoredBatch
from workers.gateway.batch_tasks import QUEUE_LEASE_S, BatchTasks
from workers.gateway.errors import ApiError
from workers.gateway.jsonl_bounds import LineBounds, LineLimitError, slices
from workers.settings import WorkerSettings

_RUNNING = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
# How long a replica's claim to write a batch's files holds: past it (the replica died),
# the next read claims it again.
FINALIZE_LEASE_S = 120


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
        self.tasks = BatchTasks(self.store, producer, ttl_s=settings.batch_ttl_s)

    async def upload(
        self, filename: str, content: bytes | bytearray, owner: str | None
    ) -> FileObject:
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
        """Check the input file's size in lines, start the batch (``validating``), and
        leave checking and queueing its lines to the background (:class:`BatchTasks`)."""
        meta = await self.visible_file(body.input_file_id, caller)
        if meta.purpose != "batch":
            raise ApiError(
                400, "validation", f"file {meta.id!r} has purpose {meta.purpose!r}, not 'batch'"
            )
        content = await self.store.file_content(meta.id) or b""
        total = await self._count_lines(content, meta.id)
        now = int(time.time())
        batch = Batch(
            id=f"batch_{uuid.uuid4().hex}",
            endpoint=body.endpoint,
            input_file_id=meta.id,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + COMPLETION_WINDOW_S,
            metadata=body.metadata,
            request_counts=RequestCounts(total=total),
        )
        await self.store.create_batch(
            StoredBatch(batch, caller.owner), ttl_s=self.settings.batch_ttl_s
        )
        await self.store.claim(batch.id, "queue", QUEUE_LEASE_S)
        self.tasks.start(
            batch.id,
            self.tasks.queue(batch, caller.owner, content, self._rules(batch, caller.owner)),
        )
        return batch

    async def _requeue(self, stored: StoredBatch) -> None:
        """Take over the queueing of a batch whose queuer died (its lease ran out): its
        lines are checked again from the start, or it fails if its file is gone."""
        batch = stored.batch
        if not await self.store.claim(batch.id, "queue", QUEUE_LEASE_S):
            return  # a live queuer holds it
        content = await self.store.file_content(batch.input_file_id)
        if content is None:
            await self.store.release(batch.id, "queue")
            await self.tasks.fail(batch, f"the input file {batch.input_file_id!r} is gone")
            return
        await self.store.restart_lines(batch.id)
        work = self.tasks.queue(batch, stored.owner, content, self._rules(batch, stored.owner))
        self.tasks.start(batch.id, work)

    async def _count_lines(self, content: bytes, file_id: str) -> int:
        """The file's non-blank lines, counted a slice at a time; 400 at the first slice
        past ``max_batch_lines`` (or a line over the longest allowed), or for no lines."""
        bounds = LineBounds(max_lines=self.settings.max_batch_lines)
        try:
            for piece in slices(content):
                bounds.feed(piece)
                await asyncio.sleep(0)
            total = bounds.finish()
        except LineLimitError as exc:
            raise ApiError(400, "validation", f"file {file_id!r}: {exc}") from None
        if not total:
            raise ApiError(400, "validation", f"file {file_id!r} has no lines")
        return total

    def _rules(self, batch: Batch, owner: str | None) -> LineRules:
        return LineRules(
            endpoint=batch.endpoint,
            base_model=self.settings.base_model_name,
            max_new_tokens=self.settings.max_new_tokens,
            priority=self.settings.batch_priority,
            deadline=float(batch.expires_at or 0),
            result_ttl_s=self.settings.batch_ttl_s,
            tenant=owner,
        )

    async def refresh(self, stored: StoredBatch) -> Batch:
        """The batch with counts and status as its jobs stand, from a bounded read (see
        :mod:`batch_counts`); once every job has ended it goes ``finalizing`` and its
        files are written in the background (:meth:`_finalize`)."""
        batch = stored.batch.model_copy(deep=True)
        if batch.status is BatchStatus.VALIDATING:
            await self._requeue(stored)
        if batch.status not in _RUNNING:
            return batch
        if batch.status is not BatchStatus.FINALIZING:
            batch.request_counts, over = await self._count(batch)
            if not over:
                if batch.request_counts != stored.batch.request_counts:
                    await self.store.update_batch(batch, allowed_from=[batch.status])
                return batch
            if batch.status is BatchStatus.IN_PROGRESS:
                batch.status, batch.finalizing_at = BatchStatus.FINALIZING, int(time.time())
                if not await self.store.update_batch(batch, allowed_from=[BatchStatus.IN_PROGRESS]):
                    again = await self.store.get_batch(batch.id)  # another reader moved it
                    return again.batch if again else batch
        lease_s = min(FINALIZE_LEASE_S, self.settings.batch_ttl_s)
        if await self.store.claim(batch.id, "finalize", lease_s):
            self.tasks.start(batch.id, self._finalize(stored.owner, batch))
        return batch

    async def _count(self, batch: Batch) -> tuple[RequestCounts, bool]:
        """Refresh a few unfinished slices' counts; the batch's counts and whether all
        of its jobs have ended."""
        known, start = await self.store.slice_counts(batch.id)
        slices = -(-(await self.store.line_total(batch.id)) // READ_CHUNK)
        fresh: dict[int, SliceCount] = {}
        chosen = slices_to_read(known, slices, start=start)
        for index in chosen:
            lines = await self.store.line_slice(batch.id, index)
            statuses = await self.store.job_statuses([line.job_id for line in lines if line.job_id])
            counts, pending = count_lines(lines, statuses)
            fresh[index] = SliceCount(counts.completed, counts.failed, pending)
        if fresh:
            await self.store.save_slice_counts(
                batch.id, fresh, start=(chosen[-1] + 1) % slices, ttl_s=self.settings.batch_ttl_s
            )
        return add_up({**known, **fresh}, slices, batch.request_counts.total)

    async def _finalize(self, owner: str | None, batch: Batch) -> None:
        """Write the output and error files, a slice of lines at a time, and end the batch
        (the script lets one writer win when two raced); then release the claim."""
        try:
            await self._write_files(owner, batch)
        finally:
            await self.store.release(batch.id, "finalize")

    async def _write_files(self, owner: str | None, batch: Batch) -> None:
        contents = {"output": bytearray(), "error": bytearray()}
        expired = False
        async for lines in self.store.line_slices(batch.id):
            queued = [line.job_id for line in lines if line.job_id]
            ended = sort_lines(lines, await self.store.job_records(queued), batch.endpoint)
            contents["output"] += jsonl(ended.outputs)
            contents["error"] += jsonl(ended.errors)
            expired |= ended.expired
        done = batch.model_copy(deep=True)
        files = []
        for kind, content in contents.items():
            if content:
                new = self._output_file(batch.id, kind, bytes(content))
                files.append(new)
                setattr(done, f"{kind}_file_id", new.meta.id)
        end_batch(done, expired=expired, now=int(time.time()))
        await self.store.update_batch(
            done,
            allowed_from=[BatchStatus.FINALIZING, BatchStatus.CANCELLING],
            owner=owner,
            files=files,
        )

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
        """Stop the batch: it goes ``cancelling`` at once, its jobs are cancelled in the
        background (see :meth:`BatchTasks.cancel`), and it ends ``cancelled`` once none
        is left. A batch still ``validating`` stops queueing at its next slice."""
        batch = stored.batch.model_copy(deep=True)
        if batch.status.is_final:
            raise ApiError(
                409, "conflict", f"batch {batch.id!r} already ended: {batch.status.value}"
            )
        if batch.status is not BatchStatus.CANCELLING:
            validating = batch.status is BatchStatus.VALIDATING
            batch.status, batch.cancelling_at = BatchStatus.CANCELLING, int(time.time())
            allowed = [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING]
            if not await self.store.update_batch(batch, allowed_from=allowed):
                return await self.refresh(await self.visible_batch(batch.id, caller))
            if validating:
                return batch  # its queueing task sees the status and cancels what it queued
        self.tasks.start(batch.id, self.tasks.cancel(batch.id))
        return batch

    async def list(self, caller: Caller, *, after: str | None, limit: int) -> BatchList:
        """The caller's batches, newest first, from the one after ``after``: read from the
        caller's own listing, so other keys' batches are never read (an ``after`` that is
        not the caller's answers as an unknown id does: an empty page)."""
        owner = caller.required_owner
        found: list[StoredBatch] = []
        expired: list[str] = []
        start, has_more = 0, False
        try:
            while not has_more:
                ids = await self.store.listed(owner, after=after, start=start, count=limit + 1)
                if not ids:
                    break
                start += len(ids)
                for batch_id in ids:
                    stored = await self.store.get_batch(batch_id)
                    if stored is None:
                        expired.append(batch_id)
                    elif caller.may_see(stored.owner):
                        has_more = len(found) == limit
                        if has_more:
                            break
                        found.append(stored)
        finally:
            await self.store.forget(owner, expired)
        return _page([await self.refresh(stored) for stored in found], has_more=has_more)


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
