"""Model replicas' heartbeats in ``{P}:replicas``: the writer's loop on Redis, and the
replicas of the live application as ``loraq top`` shows them."""

from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from demo.tasks import ADAPTER_RULES
from producer import Producer
from schemas import Keys
from schemas.replicas import ConsumerHeartbeat, ReplicaHeartbeat
from tests.integration.producer_api.test_cli_stats_json import loraq
from tests.integration.serve.conftest import MAX_NEW_TOKENS, LiveApp
from workers.serve.heartbeat import HeartbeatWriter, hash_ttl_s


@pytest.mark.timeout(30)
async def test_the_writer_beats_every_interval_and_its_entry_goes_when_it_stops(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    keys = Keys(prefix)
    beats: list[float] = []

    def status() -> ReplicaHeartbeat:
        beats.append(time.time())
        return ReplicaHeartbeat(replica="r-loop", ts=beats[-1], interval_s=0.1)

    client = aioredis.Redis.from_url(redis_url)
    writer = HeartbeatWriter(client, keys, status, interval_s=0.1)
    try:
        writer.start()
        await asyncio.sleep(0.55)
        assert 4 <= len(beats) <= 7
        assert Producer(r, prefix=prefix).stats().replicas[0].replica == "r-loop"
        assert 0 < r.pttl(keys.replicas) <= hash_ttl_s(0.1) * 1000
        await writer.stop()
        assert not r.exists(keys.replicas)
    finally:
        await client.aclose()


def live_beats(
    producer: Producer, replicas: int, since: float, deadline: float
) -> list[ReplicaHeartbeat]:
    """The heartbeats, once every replica has beaten at or after ``since`` (epoch seconds).

    The app is shared by the session's tests: a replica that generated tokens for an
    earlier test may still show the beat it made before this test's jobs ran.
    """
    while True:
        beats = producer.stats().replicas
        if len(beats) == replicas and all(
            b.ts >= since and b.backend.tokens_generated for b in beats
        ):
            return beats
        assert time.monotonic() < deadline, beats
        time.sleep(0.5)


@pytest.mark.timeout(180)
def test_the_live_replicas_report_their_warm_adapters_and_top_shows_them(
    live_app: LiveApp, kit_prompts: list[str]
) -> None:
    adapters = sorted(ADAPTER_RULES)
    jobs = [
        {"adapter": adapter, "prompt": prompt, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
        for adapter in adapters
        for prompt in kit_prompts[:4]
    ]
    with live_app.producer() as producer:
        records = producer.wait_many(producer.submit_many(jobs), timeout=120)
        assert all(record.result is not None for record in records.values())
        # Heartbeats come every LORAQ_HEARTBEAT_S: wait for one after the jobs, which
        # shows the adapters that stay warm until the next jobs come.
        beats = live_beats(
            producer,
            live_app.settings.num_model_replicas,
            since=time.time(),
            deadline=time.monotonic() + 30,
        )

    served = live_app.model_stats()
    assert {b.replica for b in beats} == set(served)
    for beat in beats:
        # Nothing ran since the beat: it shows the replica as it is.
        assert set(beat.adapters) == set(served[beat.replica]["adapters"]) <= set(adapters)
        assert beat.backend.cache_loads == served[beat.replica]["cache_loads"]
        assert beat.node and beat.interval_s == live_app.settings.heartbeat_s
    assert set().union(*(b.adapters for b in beats))

    env = {**os.environ, "COLUMNS": "100", "LINES": "30"}
    frame = loraq(live_app.redis_url, live_app.settings.prefix, "top", "--once", env=env)
    print(frame)
    assert len(frame.rstrip("\n").split("\n")) <= 30
    for beat in beats:
        [line] = [line for line in frame.splitlines() if beat.replica in line]
        assert all(adapter in line for adapter in beat.adapters[-1:]), line
    assert f"{live_app.settings.app_name}-0" in frame  # the JobConsumer's name


@pytest.mark.timeout(120)
def test_the_consumer_beats_its_window_figures_and_stats_shows_them(live_app: LiveApp) -> None:
    name = f"{live_app.settings.app_name}-0"
    deadline = time.monotonic() + 30
    with live_app.producer() as producer:
        while True:
            fields = producer.client.hgetall(live_app.keys.consumers)
            beats = live_beats_of(fields)
            if name in beats and beats[name].replicas_known:
                break
            assert time.monotonic() < deadline, fields
            time.sleep(0.5)
    beat = beats[name]
    # The window is on in the shared app: its figures are numbers, and it sees both
    # model replicas through their heartbeats.
    assert beat.window_depth is not None and beat.window_oldest_wait_s is not None
    assert beat.replicas_known == live_app.settings.num_model_replicas
    stats = orjson.loads(loraq(live_app.redis_url, live_app.settings.prefix, "stats", "--json"))
    [consumer] = [c for c in stats["consumers"] if c["name"] == name]
    assert consumer["window_depth"] is not None


def live_beats_of(fields: dict[bytes, bytes]) -> dict[str, ConsumerHeartbeat]:
    parsed = [ConsumerHeartbeat.model_validate_json(value) for value in fields.values()]
    return {beat.consumer: beat for beat in parsed if beat.is_fresh(time.time())}
