"""``loraq stats --json`` on a queue the real producer, store scripts and heartbeat wrote."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from producer import Producer
from tests.conftest import REPO
from tests.integration.producer_api.queue_scene import (
    ADAPTERS,
    CONSUMER,
    NODE,
    REPLICA,
    build_scene,
    replica_status,
)
from workers.serve.heartbeat import HeartbeatWriter


def loraq(redis_url: str, prefix: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the ``loraq`` command line in a process of its own; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "producer.cli", "--redis-url", redis_url, "--prefix", prefix, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(60)
async def test_stats_json_has_queue_status_counts_consumers_and_replicas(
    redis_url: str, aclient: aioredis.Redis, prefix: str, producer: Producer
) -> None:
    await build_scene(producer, aclient)

    stats = orjson.loads(loraq(redis_url, prefix, "stats", "--json"))

    assert (stats["stream_length"], stats["lag"], stats["pending"]) == (6, 2, 1)
    assert (stats["dead_letters"], stats["group_exists"]) == (1, True)
    assert [(c["name"], c["pending"]) for c in stats["consumers"]] == [(CONSUMER, 1)]
    recent = stats["recent"]
    assert recent["by_status"] == {"failed": 1, "running": 4, "succeeded": 2}
    assert (recent["finished"], recent["truncated"]) == (3, False)
    assert recent["error_rate"] == pytest.approx(1 / 3)
    assert recent["jobs_per_s"] == pytest.approx(3 / 60)
    [replica] = stats["replicas"]
    assert (replica["replica"], replica["node"], replica["adapters"]) == (REPLICA, NODE, ADAPTERS)
    assert (replica["rows_in_flight"], replica["tokens_generated"]) == (1, 40)
    assert time.time() - replica["ts"] < 30


@pytest.mark.timeout(60)
async def test_a_replica_silent_for_three_beats_is_hidden_then_pruned(
    aclient: aioredis.Redis, prefix: str, producer: Producer, r: redis.Redis
) -> None:
    await build_scene(producer, aclient)
    gone = replica_status(tokens=5, now=time.time() - 16).model_copy(update={"replica": "old"})
    await HeartbeatWriter(aclient, producer.keys, lambda: gone, gone.interval_s).beat()
    assert r.hlen(producer.keys.replicas) == 2
    assert [b.replica for b in producer.stats().replicas] == [REPLICA]

    fresh = replica_status(tokens=50, now=time.time())
    await HeartbeatWriter(aclient, producer.keys, lambda: fresh, fresh.interval_s).beat()
    assert r.hkeys(producer.keys.replicas) == [REPLICA.encode()]
    assert 0 < r.ttl(producer.keys.replicas) <= 15
