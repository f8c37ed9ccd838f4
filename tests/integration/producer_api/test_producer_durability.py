"""``LORAQ_REDIS_MIN_REPLICAS`` on a server with fewer replicas than asked: every enqueue is
an error the caller sees, naming the ids; the job stands on the primary, and submitting
the same id again enqueues nothing more. (Replicas that do confirm: tests/integration/
failover/, on a primary with a real replica.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from producer import AsyncProducer, Producer
from producer.cli import EXIT_NO_REDIS
from producer.durability import Durability, ReplicationTimeoutError
from schemas import Keys

WAIT_MS = 50


def more_than_it_has(r: redis.Redis) -> Durability:
    """Replicas the server cannot confirm: one more than it has."""
    replicas = int(r.info("replication").get("connected_slaves", 0))
    return Durability(min_replicas=replicas + 1, timeout_ms=WAIT_MS)


def test_a_short_wait_fails_the_submit_and_a_resubmit_adds_nothing(
    r: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    producer = Producer(r, prefix=prefix, durability=more_than_it_has(r))
    for _ in range(2):
        with pytest.raises(ReplicationTimeoutError, match="not yet safe") as err:
            producer.submit("hello", id="durable-1")
        assert err.value.ids == ["durable-1"]
    jobs: list[dict[str, object]] = [{"prompt": "a", "id": "durable-2"}, {"prompt": "b"}]
    with pytest.raises(ReplicationTimeoutError) as err:
        producer.submit_many(jobs, chunk_size=1)
    # The first chunk ended the call: its error names both jobs, the second's id assigned.
    assert err.value.ids == ["durable-2"] and err.value.confirmed == []
    assert err.value.job_ids[0] == "durable-2" and len(err.value.job_ids) == 2
    assert r.xlen(keys.jobs) == 2
    # Submitted again under those ids, nothing runs twice.
    again = [{**job, "id": job_id} for job, job_id in zip(jobs, err.value.job_ids, strict=True)]
    with pytest.raises(ReplicationTimeoutError):
        producer.submit_many(again)
    assert r.xlen(keys.jobs) == 3
    assert r.hget(keys.job("durable-1"), "status") == b"queued"


async def test_the_async_producer_fails_the_same_way(
    r: redis.Redis, aclient: redis.asyncio.Redis, prefix: str
) -> None:
    producer = AsyncProducer(aclient, prefix=prefix, durability=more_than_it_has(r))
    with pytest.raises(ReplicationTimeoutError):
        await producer.submit("hello", id="durable-3")


def test_the_cli_exits_3_and_says_why(r: redis.Redis, redis_url: str, prefix: str) -> None:
    durability = more_than_it_has(r)
    env = {
        **os.environ,
        "LORAQ_REDIS_URL": redis_url,
        "LORAQ_REDIS_MIN_REPLICAS": str(durability.min_replicas),
        "LORAQ_REDIS_WAIT_TIMEOUT_MS": str(WAIT_MS),
    }
    command = [sys.executable, "-m", "producer.cli", "--prefix", prefix, "submit", "hi"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_NO_REDIS, done.stderr
    assert "replicas acknowledged" in done.stderr and done.stdout == ""
