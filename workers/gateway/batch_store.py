"""Files and batches of the Batch API in Redis: ``{P}:file:{id}``, ``{P}:batch:{id}``,
``{P}:batches``. Thin: every multi-key change is one script of :mod:`batch_scripts`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from pydantic import TypeAdapter

from schemas import JobRecord, JobStatus, Keys
from schemas.batches import Batch, BatchStatus, FileObject
from schemas.codec import as_text
from workers.gateway import batch_scripts
from workers.gateway.batch_lines import StoredLine

# Job records read per round trip.
READ_CHUNK = 1000


_LINES = TypeAdapter(list[StoredLine])


@dataclass(frozen=True)
class StoredBatch:
    """A batch, who owns it, and its lines."""

    batch: Batch
    owner: str | None
    lines: list[StoredLine]


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
        self._put_file = client.register_script(batch_scripts.PUT_FILE)
        self._create = client.register_script(batch_scripts.CREATE_BATCH)
        self._update = client.register_script(batch_scripts.UPDATE_BATCH)

    async def put_file(
        self, meta: FileObject, content: bytes, *, owner: str | None, ttl_s: int
    ) -> None:
        """Write a file whole, with its TTL."""
        args: list[str | bytes | int] = [meta.model_dump_json(), content, owner or "", ttl_s]
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
        """Write a new batch with its TTL and list it."""
        batch = stored.batch
        # The listing's score is the creation time to the microsecond, not ``created_at``
        # (whole seconds): batches created within one second still list newest first.
        now = time.time()
        args: list[str | bytes | float] = [
            batch.model_dump_json(),
            batch.status.value,
            _LINES.dump_json(stored.lines),
            stored.owner or "",
            ttl_s,
            now,
            now - ttl_s,
        ]
        await self._create(keys=[self.keys.batch(batch.id), self.keys.batches], args=args)

    async def get_batch(self, batch_id: str) -> StoredBatch | None:
        """A batch with its owner and lines; ``None`` when there is none."""
        raw, owner, lines = await self.client.hmget(
            self.keys.batch(batch_id), ["batch", "owner", "lines"]
        )
        if raw is None:
            return None
        return StoredBatch(
            Batch.model_validate_json(raw), _text(owner), _LINES.validate_json(lines or b"[]")
        )

    async def update_batch(
        self,
        batch: Batch,
        *,
        allowed_from: Sequence[BatchStatus],
        owner: str | None = None,
        files: Sequence[NewFile] = (),
    ) -> bool:
        """Store ``batch`` (and its new files) if it is still in one of ``allowed_from``."""
        pairs: list[Any] = []
        for new in files:
            pairs += [new.meta.model_dump_json(), new.content]
        pairs += [""] * (4 - len(pairs))
        args = [batch.model_dump_json(), batch.status.value, owner or "", *pairs]
        args += [status.value for status in allowed_from]
        keys = [self.keys.batch(batch.id), *(self.keys.file(new.meta.id) for new in files)]
        return bool(await self._update(keys=keys, args=args))

    async def batch_ids(self) -> list[str]:
        """Ids of listed batches, newest first (some may have expired since)."""
        ids: list[Any] = list(await self.client.zrevrange(self.keys.batches, 0, -1))
        return [as_text(i) for i in ids]

    async def forget(self, batch_ids: Sequence[str]) -> None:
        """Drop expired batches from the listing."""
        if batch_ids:
            await self.client.zrem(self.keys.batches, *batch_ids)

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
