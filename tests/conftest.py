"""Shared fixtures (a real Redis server, a fresh key prefix per test), and how the run is
spread over pytest-xdist's workers (``make test`` runs ``-n 2 --dist loadgroup``).

One Ray at a time: every test that uses Ray (the session's Ray and Serve through the
``ray_serve`` fixture, or a Ray of its own in a subprocess, marked ``ray``) goes to the
group ``ray``, which one worker runs whole, in one session, so that Ray and Serve start
once and a folder's shared apps are deployed once (and removed when the worker leaves
the folder: tests/integration/folder_apps.py). Each other test goes to the group of its
folder (``unit``, ``integration/engine``, ...), so that a folder's session and module
fixtures (the engine kit, an S3 server) are built once, and the folders run beside the
Ray group on the other worker. (tests/xdist_groups.py carries the groups to xdist's scheduler.)
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from producer.embedded import EmbeddedRedis, answers
from tests import figures
from tests.xdist_groups import (  # noqa: F401 (hooks, found by name)
    pytest_collection_finish,
    pytest_configure_node,
    pytest_xdist_make_scheduler,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
# Longer than Ray's and vLLM's own exit work takes; see pytest_unconfigure.
EXIT_GRACE_S = 180
TESTS = REPO / "tests"
RAY_GROUP = "ray"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{RAY_GROUP}: starts a Ray of its own (a subprocess cluster, `loraq serve`); runs in "
        "the worker that runs the session's Ray (tests using ray_serve go there anyway)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test's xdist group (see the module docstring); without xdist the groups do
    nothing. First, so that xdist's own hook finds the groups."""
    for item in items:
        if "ray_serve" in getattr(item, "fixturenames", ()) or item.get_closest_marker(RAY_GROUP):
            group = RAY_GROUP
        else:
            group = item.path.parent.relative_to(TESTS).as_posix()
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The figures the test recorded (tests/figures.py) go into its report."""
    report = yield
    report.user_properties.extend((figures.PROPERTY, line) for line in figures.take_lines())
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each section of figures, one line per scenario that ran (also from xdist workers)."""
    sections: dict[str, list[str]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == figures.PROPERTY:
                    title, line = value
                    sections.setdefault(title, []).append(line)
    for title, lines in sections.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Bound the interpreter's exit: past ``EXIT_GRACE_S`` every thread's stack is printed
    and the process exits with 1. One CI run passed all its tests, then hung in teardown
    (an object's ``__del__`` there) until CI's own limit killed it, with nothing to show
    where. Not in an xdist worker: one that has run its share waits, its session over,
    until the last worker ends (xdist's controller then ends it, killing it past 10 s)."""
    if not hasattr(config, "workerinput"):
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
