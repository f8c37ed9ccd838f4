"""Shared fixtures: a real Redis server and a fresh key prefix per test."""

from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.embedded import EmbeddedRedis, answers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
# Longer than Ray's and vLLM's own exit work takes; see pytest_unconfigure.
EXIT_GRACE_S = 180


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Bound the interpreter's exit: past ``EXIT_GRACE_S`` every thread's stack is printed
    and the process exits with 1. One CI run passed all its tests, then hung in teardown
    (an object's ``__del__`` there) until CI's own limit killed it, with nothing to show
    where."""
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=sys.__stderr__)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when one answers (or LORAQ_TEST_REDIS_URL), else our own."""
    url = os.environ.get("LORAQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if answers(url):
        yield url
        return
    with EmbeddedRedis(state_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (never a flush)."""
    name = f"loraqtest:{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client (bytes replies) on the test server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def redis_cli(url: str, *args: str, stdin: str | None = None) -> str:
    """Run the real ``redis-cli`` binary against ``url`` and return its stdout."""
    binary = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if binary is None:
        pytest.skip("redis-cli is not installed")
    out = subprocess.run(
        [binary, "-u", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout
