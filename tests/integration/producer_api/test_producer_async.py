"""AsyncProducer against the real server: the same protocol as Producer, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from producer import AsyncProducer, JobTimeoutError, JobValidationError
from schemas import JobStatus, Keys
from tests.integration.producer_api.worker_role import WorkerRole


@pytest.fixture
async def aproducer(redis_url: str, prefix: str) -> AsyncIterator[AsyncProducer]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield AsyncProducer(client, prefix=prefix)
    await client.aclose()


async def later(delay_s: float, action: object, *args: object, **kwargs: object) -> None:
    await asyncio.sleep(delay_s)
    await asyncio.to_thread(action, *args, **kwargs)  # type: ignore[arg-type]


async def test_submit_get_and_wait(aproducer: AsyncProducer, worker: WorkerRole) -> None:
    job_id = await aproducer.submit("hi", adapter="upper", params={"max_new_tokens": 4})
    record = await aproducer.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED
    assert await aproducer.submit("again", id=job_id) == job_id

    finisher = asyncio.create_task(later(0.1, worker.finish, job_id, text="HI"))
    record = await aproducer.wait(job_id, timeout=10)
    await finisher
    assert record.status is JobStatus.SUCCEEDED
    assert record.result is not None and record.result.text == "HI"


async def test_events_is_an_async_iterator(aproducer: AsyncProducer, worker: WorkerRole) -> None:
    job_id = await aproducer.submit("hi")
    worker.start(job_id)
    worker.finish(job_id, chunks=["a", "b"])
    events = [event async for event in aproducer.events(job_id, timeout=5)]
    assert [e.text for e in events if e.event == "chunk"] == ["a", "b"]
    assert events[-1].status is JobStatus.SUCCEEDED


async def test_submit_many_wait_many_and_as_completed(
    aproducer: AsyncProducer, worker: WorkerRole, r: redis.Redis, keys: Keys
) -> None:
    ids = await aproducer.submit_many([{"prompt": f"p{i}"} for i in range(1000)], chunk_size=300)
    assert len(set(ids)) == 1000
    assert r.xlen(keys.jobs) == 1000

    for job_id in ids[:3]:
        worker.finish(job_id)
    seen = [record.id async for record in aproducer.as_completed(ids[:3], timeout=5)]
    assert sorted(seen) == sorted(ids[:3])

    with pytest.raises(JobTimeoutError) as caught:
        await aproducer.wait_many(ids[:5], timeout=0.2)
    assert sorted(caught.value.pending) == sorted(ids[3:5])
    assert set(caught.value.done) == set(ids[:3])


async def test_cancel_stats_and_validation(
    aproducer: AsyncProducer, r: redis.Redis, keys: Keys
) -> None:
    job_id = await aproducer.submit("x")
    assert await aproducer.cancel(job_id) is True
    assert r.exists(keys.cancel(job_id))
    stats = await aproducer.stats()
    assert (stats.stream_length, stats.group_exists) == (1, False)
    with pytest.raises(JobValidationError, match=r"params\.top_k"):
        await aproducer.submit("x", params={"top_k": -1})
    assert r.xlen(keys.jobs) == 1
