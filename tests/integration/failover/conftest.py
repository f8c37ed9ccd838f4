"""Failover scenarios on Redis topologies of their own (see topology.py): the figures of
each are printed in pytest's terminal summary, like the chaos suite's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.failover.feeds import FIGURES
from tests.integration.failover.topology import Cluster, SentinelSet


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("failover figures")
    for tally in FIGURES:
        terminalreporter.write_line(tally.line())


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels, stopped at the module's end."""
    topology = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three primaries in one Redis Cluster, stopped at the module's end."""
    topology = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield topology.start()
    finally:
        topology.stop()
