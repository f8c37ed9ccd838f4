"""The embedded server: starts, serves the producer, and leaves no process when stopped."""

from __future__ import annotations

import os
from pathlib import Path

from producer import Producer
from producer.embedded import EmbeddedRedis, answers
from producer.settings import ClientSettings
from schemas import JobStatus


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_server_serves_the_producer_and_stops_cleanly(tmp_path: Path) -> None:
    server = EmbeddedRedis(state_dir=tmp_path / "redis").start()
    assert server.process is not None
    pid = server.process.pid
    try:
        assert pid_alive(pid) and answers(server.url)
        producer = Producer.from_settings(ClientSettings(redis_url=server.url, prefix="emb"))
        job_id = producer.submit("hello", adapter="upper")
        record = producer.get(job_id)
        assert record is not None and record.status is JobStatus.QUEUED
        assert producer.stats().stream_length == 1
        producer.close()
    finally:
        server.stop()

    assert not server.running
    assert not pid_alive(pid)  # stop() reaped it: no zombie either
    assert not answers(server.url)
    # AOF was on: the job outlives the process.
    assert any((tmp_path / "redis").rglob("*.aof"))


def test_a_restarted_embedded_server_keeps_the_queued_job(tmp_path: Path) -> None:
    # A clean stop (SIGTERM) flushes the AOF: the job survives the restart.
    with EmbeddedRedis(state_dir=tmp_path) as server:
        port = server.port
        producer = Producer.from_settings(ClientSettings(redis_url=server.url, prefix="emb"))
        job_id = producer.submit("hello")
        producer.close()
    with EmbeddedRedis(state_dir=tmp_path, port=port) as server:
        producer = Producer.from_settings(ClientSettings(redis_url=server.url, prefix="emb"))
        record = producer.get(job_id)
        producer.close()
    assert record is not None and record.status is JobStatus.QUEUED


def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(state_dir=tmp_path, appendonly=False).start()
    server.stop()
    server.stop()
    assert not server.running
