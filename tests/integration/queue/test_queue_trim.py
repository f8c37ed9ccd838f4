"""Trimming of ``{P}:jobs`` against the real Redis server: only acknowledged entries go."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from schemas import Keys, codec
from workers.queue.store import JobStore


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[JobStore]:
    client = aioredis.Redis.from_url(redis_url)
    job_store = JobStore(client, Keys(prefix), events_maxlen=1000)
    yield job_store
    await client.aclose()


async def push(store: JobStore, count: int) -> list[str]:
    return [
        codec.as_text(await store.client.xadd(store.keys.jobs, {"job": f'{{"n":{n}}}'}))
        for n in range(count)
    ]


async def remaining(store: JobStore) -> list[str]:
    return [codec.as_text(entry_id) for entry_id, _ in await store.client.xrange(store.keys.jobs)]


async def test_no_stream_or_no_group_trims_nothing(store: JobStore) -> None:
    assert await store.trim() == 0
    ids = await push(store, 3)
    assert await store.trim() == 0  # no group yet: no entry has been delivered
    assert await remaining(store) == ids


async def test_acked_entries_go_pending_and_undelivered_stay(store: JobStore) -> None:
    ids = await push(store, 10)
    await store.ensure_group()
    taken = await store.read("c-0", count=6, block_ms=10)
    assert [e.entry_id for e in taken] == ids[:6]
    for entry_id in ids[:2] + ids[3:6]:
        await store.ack(entry_id)
    # ids[2] is still pending: it and everything after it stay.
    assert await store.trim() == 2
    assert await remaining(store) == ids[2:]

    await store.ack(ids[2])
    # Now all delivered entries are acknowledged; the four never delivered stay.
    assert await store.trim() == 4
    assert await remaining(store) == ids[6:]
    rest = await store.read("c-0", count=10, block_ms=10)
    assert [e.entry_id for e in rest] == ids[6:]


async def test_everything_delivered_and_acked_empties_the_stream(store: JobStore) -> None:
    await store.ensure_group()
    await push(store, 5)
    for entry in await store.read("c-0", count=5, block_ms=10):
        await store.ack(entry.entry_id)
    assert await store.trim() == 5
    assert await remaining(store) == []
    later = await push(store, 1)
    assert [e.entry_id for e in await store.read("c-1", count=5, block_ms=10)] == later
