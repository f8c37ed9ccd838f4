"""Combinations of settings that cannot work, refused when :class:`WorkerSettings` is built
(at start) with a message naming both settings, rather than found out under load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """``first`` and ``second`` (field names) must satisfy ``holds``; ``why`` says what
    breaks when they do not."""

    first: str
    second: str
    holds: Callable[[Any, Any], bool]
    relation: str  # how the message states what must hold, between the two names
    why: str


RULES = (
    Rule(
        "lease_renew_s",
        "visibility_timeout_s",
        lambda renew, timeout: renew < timeout,
        "below",
        "a lease must be renewed before it expires, or another consumer reclaims a job "
        "that is running",
    ),
    Rule(
        "min_model_replicas",
        "max_model_replicas",
        lambda low, high: low <= high,
        "at most",
        "the autoscaler's bounds would be empty",
    ),
    Rule(
        "retry_backoff_s",
        "max_retry_backoff_s",
        lambda first, cap: first <= cap,
        "at most",
        "the cap on the retry delay would be below its first step",
    ),
    Rule(
        "read_block_ms",
        "socket_timeout_s",
        lambda block_ms, timeout_s: block_ms < timeout_s * 1000,
        "below (in ms)",
        "a blocking XREADGROUP would outlast the socket's read timeout and fail as a "
        "broken connection",
    ),
    Rule(
        "redis_wait_timeout_ms",
        "socket_timeout_s",
        lambda wait_ms, timeout_s: wait_ms < timeout_s * 1000,
        "below (in ms)",
        "a WAIT for the replicas would outlast the socket's read timeout",
    ),
    Rule(
        "max_adapter_mb",
        "adapter_disk_cache_mb",
        lambda largest, budget: largest <= budget,
        "at most",
        "an adapter the size limit lets through could never fit the node's disk tier",
    ),
)


def env_name(field: str) -> str:
    """The environment variable of setting ``field``."""
    return f"LORAQ_{field.upper()}"


def broken_rules(values: Any) -> list[str]:
    """A message for each rule ``values`` (an object with the settings as attributes)
    breaks, naming both settings and their values."""
    problems = []
    for rule in RULES:
        first, second = getattr(values, rule.first), getattr(values, rule.second)
        if not rule.holds(first, second):
            problems.append(
                f"{env_name(rule.first)}={first} must be {rule.relation} "
                f"{env_name(rule.second)}={second}: {rule.why}"
            )
    return problems
