"""The final write under ``LORAQ_REDIS_MIN_REPLICAS``, on a server with fewer replicas:
the write stands on the primary but fails with ``ReplicationTimeoutError`` (the runner
keeps the result and writes it again); marks and chunks need no replica and go on."""

from __future__ import annotations

import pytest
import redis

from producer.durability import Durability, ReplicationTimeoutError
from schemas import JobStatus
from tests.integration.queue.test_queue_store import final, mark_running, push
from workers.queue.store import JobStore


async def test_a_final_write_no_replica_confirmed_fails_and_is_written_once(
    store: JobStore, r: redis.Redis
) -> None:
    replicas = int(r.info("replication").get("connected_slaves", 0))
    store.durability = Durability(min_replicas=replicas + 1, timeout_ms=50)
    entry_id = await push(store, {"id": "d1", "prompt": "hi"})
    await store.read("c-0", count=1, block_ms=10)
    await mark_running(store, "d1", entry_id=entry_id)
    assert await store.append_chunk("d1", "H", attempt=1, offset=0)
    write = final(entry_id, "d1", JobStatus.SUCCEEDED, "HI")
    for _ in range(2):  # the runner's retry: the record is final already, nothing changes
        with pytest.raises(ReplicationTimeoutError, match="not yet safe"):
            await store.finish(write)
    assert r.hget(store.keys.job("d1"), "status") == b"succeeded"
    assert r.xpending(store.keys.jobs, store.keys.group)["pending"] == 0
    store.durability = Durability()
    assert not await store.finish(write)  # written once
