"""``loraq top``: one frame, in a terminal of a fixed size, of a queue the real parts wrote."""

from __future__ import annotations

import io
import os
import time

import pytest
import redis.asyncio as aioredis
from rich.console import Console

from producer import Producer
from producer.rates import Readings
from producer.top import next_frame
from producer.top_view import render
from tests.integration.producer_api.queue_scene import (
    CONSUMER,
    REPLICA,
    build_scene,
    replica_status,
)
from tests.integration.producer_api.test_cli_stats_json import loraq
from workers.serve.heartbeat import HeartbeatWriter

WIDTH, HEIGHT = 100, 30
# What the scene's frame must show: queue figures, last minute by status, error rate.
QUEUE_FIGURES = ["length 6", "lag 2", "pending 1", "dead 1"]
STATUS_FIGURES = ["queued 0", "running 4", "succeeded 2", "failed 1", "cancelled 0"]


def assert_fits(frame: str) -> list[str]:
    lines = frame.rstrip("\n").split("\n")
    assert len(lines) <= HEIGHT, frame
    assert max(len(line) for line in lines) <= WIDTH, frame
    return lines


@pytest.mark.timeout(60)
async def test_top_once_prints_one_frame_that_fits_the_terminal(
    redis_url: str, aclient: aioredis.Redis, prefix: str, producer: Producer
) -> None:
    await build_scene(producer, aclient)
    env = {**os.environ, "COLUMNS": str(WIDTH), "LINES": str(HEIGHT), "TERM": "dumb"}

    frame = loraq(redis_url, prefix, "top", "--once", env=env)

    print(frame)
    lines = assert_fits(frame)
    assert prefix in lines[0]
    for figure in [*QUEUE_FIGURES, *STATUS_FIGURES, "0.05 jobs/s", "errors 33.3%"]:
        assert figure in frame, figure
    [consumer_line] = [line for line in lines if CONSUMER in line]
    # No consumer heartbeat in this scene: the window columns show "-".
    name, pending, idle, window, oldest = consumer_line.split()
    assert (window, oldest) == ("-", "-")
    assert (name, pending, idle[-1]) == (CONSUMER, "1", "s")
    [replica_line] = [line for line in lines if REPLICA in line]
    assert "upper, sql" in replica_line
    assert replica_line.split()[2:3] == ["1"]  # rows in flight
    assert "7/2/0" in replica_line


@pytest.mark.timeout(60)
async def test_a_second_frame_shows_tokens_per_second_between_heartbeats(
    aclient: aioredis.Redis, prefix: str, producer: Producer
) -> None:
    readings = Readings()
    scene = await build_scene(producer, aclient)
    next_frame(producer, readings)
    # The replica generated 100 tokens in the 2 s between its beats.
    later = replica_status(tokens=140, now=scene.heartbeat.ts + 2.0)
    await HeartbeatWriter(aclient, producer.keys, lambda: later, later.interval_s).beat()
    frame = next_frame(producer, readings)
    console = Console(width=WIDTH, height=HEIGHT, file=io.StringIO(), record=True)

    console.print(render(frame, HEIGHT))

    text = console.export_text()
    print(text)
    assert_fits(text)
    assert "50.0 tokens/s" in text
    [replica_line] = [line for line in text.splitlines() if REPLICA in line]
    assert "50.0" in replica_line
    assert frame.now - time.time() < 1
