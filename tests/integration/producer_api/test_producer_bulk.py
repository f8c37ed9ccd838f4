"""submit_many at scale: 10,000 jobs in seconds, every one with its entry and its record."""

from __future__ import annotations

import time

import redis

from producer import Producer
from schemas import Keys


def test_submit_many_ten_thousand_jobs(producer: Producer, r: redis.Redis, keys: Keys) -> None:
    jobs = [{"prompt": f"job {i}", "adapter": "sql" if i % 2 else None} for i in range(10_000)]

    started = time.perf_counter()
    ids = producer.submit_many(jobs)
    elapsed = time.perf_counter() - started
    print(f"submit_many 10,000 jobs: {elapsed:.2f}s ({len(ids) / elapsed:,.0f} jobs/s)")

    assert len(ids) == len(set(ids)) == 10_000
    assert r.xlen(keys.jobs) == 10_000
    records = sum(1 for _ in r.scan_iter(match=keys.job("*"), count=5000))
    assert records == 10_000
    pipe = r.pipeline(transaction=False)
    for job_id in ids[::1000]:
        pipe.hget(keys.job(job_id), "status")
    assert set(pipe.execute()) == {b"queued"}


def test_submit_many_is_idempotent_per_id(producer: Producer, r: redis.Redis, keys: Keys) -> None:
    jobs = [{"id": f"batch-{i}", "prompt": "p"} for i in range(1200)]
    assert producer.submit_many(jobs) == [j["id"] for j in jobs]
    # A retried batch (say, after a lost reply) enqueues nothing new.
    assert producer.submit_many(jobs, chunk_size=100) == [j["id"] for j in jobs]
    assert r.xlen(keys.jobs) == 1200
