"""Fixtures of the producer tests: a producer on the test prefix, and the test as a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis
import redis.asyncio as aioredis

from producer import Producer
from schemas import Keys, codec
from tests.integration.producer_api.worker_role import WorkerRole


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the test server (what workers and replicas use)."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def producer(r: redis.Redis, prefix: str) -> Producer:
    return Producer(r, prefix=prefix)


@pytest.fixture
def worker(r: redis.Redis, keys: Keys) -> WorkerRole:
    return WorkerRole(r, keys)


@pytest.fixture
def prefix_keys(r: redis.Redis, prefix: str) -> Callable[[], list[str]]:
    """Call to list every key under the test prefix (sorted)."""

    def listing() -> list[str]:
        return sorted(codec.as_text(k) for k in r.scan_iter(match=f"{prefix}:*", count=1000))

    return listing
