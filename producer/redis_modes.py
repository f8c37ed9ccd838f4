"""How loraq reaches Redis: one server by URL, a Sentinel-managed primary, or a Cluster.

Pure: parses and checks the connection settings; :mod:`producer.connection` builds the
clients. Checked when the settings are read, so that a worker, the gateway or the CLI
refuses a setup that cannot work before it connects anywhere.
"""

from __future__ import annotations

from enum import Enum


class RedisMode(str, Enum):
    """Which redis-py client serves the settings."""

    PLAIN = "plain"  # redis.Redis.from_url: one server
    SENTINEL = (
        "sentinel"  # redis.sentinel: the primary the sentinels name, found again after a failover
    )
    CLUSTER = "cluster"  # redis.cluster: any node of the cluster; slots followed through MOVED/ASK


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as (host, port) pairs; ``ValueError`` names a bad item."""
    addresses = []
    for item in value.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel address {item.strip()!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes, when the key has one: the text between
    the first ``{`` and the next ``}``, if not empty (as Redis's keyHashSlot reads it)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def mode_problems(
    *, sentinels: str | None, cluster: bool, prefix: str, min_replicas: int
) -> list[str]:
    """Why these settings cannot work together, one sentence each (none: they can)."""
    problems = []
    if sentinels and cluster:
        problems.append(
            "LORAQ_REDIS_SENTINELS and LORAQ_REDIS_CLUSTER are both set: "
            "a Redis Cluster has no sentinels, choose one"
        )
    if cluster and hash_tag(prefix + ":jobs") is None:
        problems.append(
            f"LORAQ_PREFIX {prefix!r} has no hash tag in braces: in Redis Cluster mode every "
            "key of a queue must hash to one slot, because each job's state change is one Lua "
            f"script over several of its keys; use e.g. LORAQ_PREFIX='{{{prefix}}}'"
        )
    if cluster and min_replicas > 0:
        problems.append(
            "LORAQ_REDIS_MIN_REPLICAS needs WAIT on the very connection that wrote, which "
            "redis-py's cluster client does not offer; set it to 0 in Cluster mode "
            "(docs/RELIABILITY.md: what each mode promises)"
        )
    return problems
