"""A job store on the real Redis server, under the test's own prefix, its group created."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from schemas import Keys
from workers.queue.store import JobStore


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[JobStore]:
    client = aioredis.Redis.from_url(redis_url)
    job_store = JobStore(client, Keys(prefix), events_maxlen=1000)
    assert await job_store.ensure_group()
    yield job_store
    await client.aclose()
