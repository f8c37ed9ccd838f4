"""Redis out of reach: a clear error naming the URL, after bounded retries; never a hang."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from producer import AsyncProducer, LoraqConnectionError, Producer
from producer.embedded import EmbeddedRedis, free_port
from producer.settings import ClientSettings


def settings_for(url: str, **extra: float) -> ClientSettings:
    return ClientSettings(redis_url=url, prefix="unreachable", connect_retries=2, **extra)


def test_nothing_listening_raises_quickly_naming_the_url() -> None:
    port = free_port()
    url = f"redis://loraq:s3cret@127.0.0.1:{port}/0"
    producer = Producer.from_settings(settings_for(url))
    for call in (lambda: producer.submit("x"), lambda: producer.get("x"), producer.stats):
        started = time.monotonic()
        with pytest.raises(LoraqConnectionError) as caught:
            call()
        assert time.monotonic() - started < 5
        message = str(caught.value)
        assert f"redis://loraq:***@127.0.0.1:{port}/0" in message
        assert "s3cret" not in message
    producer.close()


def test_a_host_that_never_answers_is_bounded_by_the_connect_timeout() -> None:
    # 192.0.2.0/24 is TEST-NET-1: packets go nowhere (or the route is refused at once).
    producer = Producer.from_settings(
        settings_for("redis://192.0.2.1:6379/0", connect_timeout_s=0.3)
    )
    started = time.monotonic()
    with pytest.raises(LoraqConnectionError, match=r"192\.0\.2\.1"):
        producer.wait("x", timeout=60)
    assert time.monotonic() - started < 10  # (1 + 2 retries) x 0.3 s plus backoff
    producer.close()


async def test_async_producer_raises_the_same_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    producer = AsyncProducer.from_settings(settings_for(url))
    with pytest.raises(LoraqConnectionError, match=re.escape(url)):
        await producer.submit("x")
    await producer.aclose()


def test_a_server_lost_during_a_wait_ends_the_wait(tmp_path: Path) -> None:
    server = EmbeddedRedis(state_dir=tmp_path, appendonly=False).start()
    producer = Producer.from_settings(settings_for(server.url))
    job_id = producer.submit("x")
    threading.Timer(0.3, server.stop).start()
    started = time.monotonic()
    with pytest.raises(LoraqConnectionError, match=str(server.port)):
        producer.wait(job_id, timeout=120)
    assert time.monotonic() - started < 15
    producer.close()
