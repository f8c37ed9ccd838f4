"""Files and batches of the Batch API in Redis: ``{P}:file:{id}``, ``{P}:batch:{id}``
with its lines ``{P}:batch:{id}:lines``, the listing ``{P}:batches`` and each owner's
``{P}:batches:owner:{owner}``, and ``{P}:batches:open``, the batches that have not
ended. Thin: every multi-key change is one script (``schemas/lua/batch_*.lua``); a
batch's lines are read a slice at a time, never all at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio
from pydantic import TypeAdapter

from schemas import JobRecord, JobStatus, Keys
from schemas.batches import Batch, BatchStatus, FileObject
from schemas.codec import as_text
from schemas.scripts import script_source
from workers.gateway.batch_counts import SliceCount
from workers.gateway.batch_lines import StoredLine

# Lines, and job records, read per round trip: one slice of a batch's work (a few ms).
READ_CHUNK = 500


_LINE = TypeAdapter(StoredLine)
# The background work of a batch that one replica at a time does, under a lease.
Work = Literal["queue", "finalize"]
# The field of a batch's counts hash that is not a slice.
_NEXT = "next"


@dataclass(frozen=True)
class StoredBatch:
    """A batch and who owns it (its lines are read apart: :meth:`BatchStore.line_slices`)."""

    batch: Batch
    owner: str | None


@dataclass(frozen=True)
class StoredFile:
    """A file's description and owner (its content is read apart: it may be large)."""

    meta: FileObject
    owner: str | None


@dataclass(frozen=True)
class NewFile:
    """A file to write with a batch's change (its output or error file)."""

    meta: FileObject
    content: bytes


class BatchStore:
    """Reads and writes files and batches under one prefix."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._put_file = client.register_script(script_source("batch_put_file"))
        self._create = client.register_script(script_source("batch_create"))
        self._update = client.register_script(script_source("batch_update"))
        self._forget = client.register_script(script_source("batch_forget"))
        self._move_legacy = client.register_script(script_source("batch_move_lines"))

    async def put_file(
        self, meta: FileObject, content: bytes | bytearray, *, owner: str | None, ttl_s: int
    ) -> None:
        """Write a file whole, with its TTL."""
        args: list[str | bytes | bytearray | int] = [
            meta.model_dump_json(),
            content,
            owner or "",
            ttl_s,
        ]
        await self._put_file(keys=[self.keys.file(meta.id)], args=args)

    async def get_file(self, file_id: str) -> StoredFile | None:
        """A file's description and owner; ``None`` when there is none."""
        meta, owner = await self.client.hmget(self.keys.file(file_id), ["meta", "owner"])
        if meta is None:
            return None
        return StoredFile(FileObject.model_validate_json(meta), _text(owner))

    async def file_content(self, file_id: str) -> bytes | None:
        """A file's bytes."""
        content = await self.client.hget(self.keys.file(file_id), "content")
        return content.encode() if isinstance(content, str) else content

    async def delete_file(self, file_id: str) -> bool:
        """Delete a file; whether there was one."""
        return bool(await self.client.delete(self.keys.file(file_id)))

    async def create_batch(self, stored: StoredBatch, *, ttl_s: int) -> None:
        """Write a new batch with its TTL and list it (among the open batches, and in its
        owner's listing too)."""
        batch = stored.batch
        # The listing's score is the creation time to the microsecond, not ``created_at``
        # (whole seconds): batches created within one second still list newest first.
        now = time.time()
        args: list[str | float] = [
            batch.model_dump_json(),
            batch.status.value,
            stored.owner or "",
            ttl_s,
            now,
            now - ttl_s,
            batch.id,
        ]
        listings = [self.keys.batches, self.keys.open_batches, *self._owner_listing(stored.owner)]
        await self._create(keys=[self.keys.batch(batch.id), *listings], args=args)

    def _owner_listing(self, owner: str | None) -> list[str]:
        return [self.keys.owner_batches(owner)] if owner else []

    async def get_batch(self, batch_id: str) -> StoredBatch | None:
        """A batch with its owner; ``None`` when there is none."""
        raw, owner = await self.client.hmget(self.keys.batch(batch_id), ["batch", "owner"])
        if raw is None:
            return None
        return StoredBatch(Batch.model_validate_json(raw), _text(owner))

    async def queue_turn(self, batch_id: str, lease_s: int) -> BatchStatus | None:
        """The batch's status alone (``None``: no batch), and the queuer's lease renewed."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.batch(batch_id), "status")
        pipe.set(self.keys.batch_queuer(batch_id), "1", ex=lease_s)
        status, _ = await pipe.execute()
        return None if status is None else BatchStatus(as_text(status))

    async def restart_lines(self, batch_id: str) -> None:
        """Forget the lines and counts a dead queuer left: the lines are checked again."""
        await self.client.delete(self.keys.batch_lines(batch_id), self.keys.batch_counts(batch_id))

    async def append_lines(self, batch_id: str, lines: Sequence[StoredLine], *, ttl_s: int) -> None:
        """Add checked lines at the end of the batch's lines (one key: no script needed)."""
        if not lines:
            return
        key = self.keys.batch_lines(batch_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(key, *(line.model_dump_json(exclude_none=True) for line in lines))
        pipe.expire(key, ttl_s)
        await pipe.execute()

    async def line_total(self, batch_id: str) -> int:
        """How many lines the batch has stored (a batch written before v1.3 has its lines
        moved to the list first)."""
        total = int(await self.client.llen(self.keys.batch_lines(batch_id)))
        if total:
            return total
        keys = [self.keys.batch(batch_id), self.keys.batch_lines(batch_id)]
        return int(await self._move_legacy(keys=keys, args=[]))

    async def line_slice(self, batch_id: str, index: int) -> list[StoredLine]:
        """Slice ``index`` of the batch's lines (:data:`READ_CHUNK` lines, fewer at the end)."""
        start = index * READ_CHUNK
        key = self.keys.batch_lines(batch_id)
        raw: list[Any] = list(await self.client.lrange(key, start, start + READ_CHUNK - 1))
        return [_LINE.validate_json(item) for item in raw]

    async def line_slices(self, batch_id: str) -> AsyncIterator[list[StoredLine]]:
        """The batch's lines in order, one slice per round trip."""
        await self.line_total(batch_id)  # a batch of before v1.3: its lines moved first
        index = 0
        while lines := await self.line_slice(batch_id, index):
            yield lines
            index += 1

    async def slice_counts(self, batch_id: str) -> tuple[dict[int, SliceCount], int]:
        """The stored counts of the batch's slices, and the slice the next read starts at."""
        raw: dict[Any, Any] = await self.client.hgetall(self.keys.batch_counts(batch_id))
        fields = {as_text(name): as_text(value) for name, value in raw.items()}
        start = int(fields.pop(_NEXT, "0"))
        return {int(index): SliceCount.load(value) for index, value in fields.items()}, start

    async def save_slice_counts(
        self, batch_id: str, counts: Mapping[int, SliceCount], *, start: int, ttl_s: int
    ) -> None:
        """Store freshly read slice counts and where the next read starts (one key)."""
        key = self.keys.batch_counts(batch_id)
        mapping: dict[Any, Any] = {_NEXT: str(start)}
        mapping.update({str(index): count.dump() for index, count in counts.items()})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl_s)
        await pipe.execute()

    async def claim(self, batch_id: str, work: Work, lease_s: int) -> bool:
        """Whether this replica may do the batch's ``work`` now (queue its lines, write
        its files): none else claimed it within ``lease_s`` (one that died is replaced
        after it)."""
        return bool(await self.client.set(self._lease(batch_id, work), "1", nx=True, ex=lease_s))

    async def release(self, batch_id: str, work: Work) -> None:
        """The work is done (or given up): no claim outlives it."""
        await self.client.delete(self._lease(batch_id, work))

    def _lease(self, batch_id: str, work: Work) -> str:
        return (
            self.keys.batch_queuer(batch_id)
            if work == "queue"
            else self.keys.batch_finalizer(batch_id)
        )

    async def update_batch(
        self,
        batch: Batch,
        *,
        allowed_from: Sequence[BatchStatus],
        owner: str | None = None,
        files: Sequence[NewFile] = (),
    ) -> bool:
        """Store ``batch`` (and its new files) if it is still in one of ``allowed_from``;
        a batch that ends leaves the open batches."""
        pairs: list[Any] = []
        for new in files:
            pairs += [new.meta.model_dump_json(), new.content]
        pairs += [""] * (4 - len(pairs))
        ended = batch.id if batch.status.is_final else ""
        args = [batch.model_dump_json(), batch.status.value, owner or "", ended, *pairs]
        args += [status.value for status in allowed_from]
        keys = [
            self.keys.batch(batch.id),
            self.keys.open_batches,
            *(self.keys.file(new.meta.id) for new in files),
        ]
        return bool(await self._update(keys=keys, args=args))

    async def listed(
        self, owner: str | None, *, after: str | None, start: int, count: int
    ) -> list[str]:
        """Up to ``count`` ids of ``owner``'s listing (``None``: everyone's), newest first,
        from position ``start`` past ``after`` (an id not in that listing: none at all)."""
        index = self.keys.owner_batches(owner) if owner else self.keys.batches
        if after is not None:
            rank: Any = await self.client.zrevrank(index, after)
            if rank is None:
                return []
            start += int(rank) + 1
        ids: list[Any] = list(await self.client.zrevrange(index, start, start + count - 1))
        return [as_text(i) for i in ids]

    async def open_ids(self, *, start: int, count: int) -> list[str]:
        """Up to ``count`` ids of the batches that have not ended, oldest first, from
        position ``start``."""
        ids: list[Any] = list(
            await self.client.zrange(self.keys.open_batches, start, start + count - 1)
        )
        return [as_text(i) for i in ids]

    async def reopen(self, batch: Batch) -> None:
        """List a batch that has not ended among the open ones (a batch created before
        v1.4, when there was no such listing)."""
        await self.client.zadd(self.keys.open_batches, {batch.id: batch.created_at}, nx=True)

    async def forget(self, owner: str | None, batch_ids: Sequence[str]) -> None:
        """Drop expired batches from the listings."""
        if batch_ids:
            listings = [self.keys.batches, self.keys.open_batches, *self._owner_listing(owner)]
            await self._forget(keys=listings, args=list(batch_ids))

    async def closed(self, batch_ids: Sequence[str]) -> None:
        """Drop batches that ended from the open ones (the update that ended them did, unless
        it ran before v1.4)."""
        if batch_ids:
            await self._forget(keys=[self.keys.open_batches], args=list(batch_ids))

    async def job_statuses(self, job_ids: Sequence[str]) -> list[JobStatus | None]:
        """The status of each job (``None``: no record)."""
        replies = await self._each(job_ids, lambda pipe, key: pipe.hget(key, "status"))
        return [None if reply is None else JobStatus(as_text(reply)) for reply in replies]

    async def job_records(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """The record of each job (``None``: no record)."""
        replies = await self._each(job_ids, lambda pipe, key: pipe.hgetall(key))
        return [
            JobRecord.from_hash(job_id, reply) if reply else None
            for job_id, reply in zip(job_ids, replies, strict=True)
        ]

    async def _each(self, job_ids: Sequence[str], command: Any) -> list[Any]:
        replies: list[Any] = []
        for start in range(0, len(job_ids), READ_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids[start : start + READ_CHUNK]:
                command(pipe, self.keys.job(job_id))
            replies += await pipe.execute()
        return replies


def _text(value: Any) -> str | None:
    return None if value is None else as_text(value)
