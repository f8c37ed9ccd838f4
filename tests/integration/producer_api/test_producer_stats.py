"""Queue statistics, before and after workers exist."""

from __future__ import annotations

import redis

from producer import Producer
from schemas import Keys


def test_stats_of_a_prefix_with_nothing_yet(producer: Producer) -> None:
    stats = producer.stats()
    assert (stats.stream_length, stats.dead_letters, stats.group_exists) == (0, 0, False)
    assert (stats.pending, stats.lag, stats.consumers) == (0, None, [])


def test_stats_with_a_group_consumers_and_dead_letters(
    producer: Producer, r: redis.Redis, keys: Keys
) -> None:
    producer.submit_many([{"prompt": f"p{i}"} for i in range(5)])
    r.xgroup_create(keys.jobs, keys.group, id="0")
    stats = producer.stats()
    assert stats.group_exists and stats.lag == 5 and stats.consumers == []

    delivered = r.xreadgroup(keys.group, "worker-a", {keys.jobs: ">"}, count=3)
    entry_ids = [entry_id for entry_id, _ in delivered[0][1]]
    r.xack(keys.jobs, keys.group, entry_ids[0])
    r.xreadgroup(keys.group, "worker-b", {keys.jobs: ">"}, count=1)
    r.xadd(keys.dead, {"id": "x", "payload": "{}", "error": "{}", "attempts": 3})

    stats = producer.stats()
    assert stats.stream_length == 5
    assert stats.pending == 3
    assert stats.lag == 1
    assert stats.dead_letters == 1
    by_name = {c.name: c for c in stats.consumers}
    assert {name: c.pending for name, c in by_name.items()} == {"worker-a": 2, "worker-b": 1}
    assert all(0 <= c.idle_ms < 60_000 for c in stats.consumers)
