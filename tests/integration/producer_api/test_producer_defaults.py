"""``Producer()`` and ``AsyncProducer()`` with no arguments read the settings; ``from_url``."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from producer import AsyncProducer, Producer
from schemas import Keys


def test_producer_without_arguments_uses_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, r: redis.Redis
) -> None:
    prefix = f"loraqtest:defaults{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("LORAQ_REDIS_URL", redis_url)
    monkeypatch.setenv("LORAQ_PREFIX", prefix)
    monkeypatch.setenv("LORAQ_JOB_TTL_S", "600")
    try:
        with Producer() as producer:
            assert producer.keys.prefix == prefix and producer.job_ttl_s == 600
            job_id = producer.submit("hello", adapter="upper")
        assert r.hget(Keys(prefix).job(job_id), "status") == b"queued"
        assert 0 < r.ttl(Keys(prefix).job(job_id)) <= 600

        async def submit_async() -> str:
            async with AsyncProducer() as producer:
                assert producer.keys.prefix == prefix
                return await producer.submit("hello")

        assert r.exists(Keys(prefix).job(asyncio.run(submit_async())))
        with Producer.from_url(redis_url, prefix=prefix + "x") as producer:
            assert producer.keys.prefix == prefix + "x"
            assert producer.client.ping()
    finally:
        for key in r.scan_iter(match=f"{prefix}*"):
            r.delete(key)
