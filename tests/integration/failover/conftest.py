"""Failover scenarios on Redis topologies of their own (see topology.py): the figures of
each are printed in pytest's terminal summary, like the chaos suite's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.failover.topology import Cluster, SentinelSet, running


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels, stopped at the module's end."""
    with running(SentinelSet(tmp_path_factory.mktemp("sentinel"))) as topology:
        yield topology


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three primaries in one Redis Cluster, stopped at the module's end."""
    with running(Cluster(tmp_path_factory.mktemp("cluster"))) as topology:
        yield topology
