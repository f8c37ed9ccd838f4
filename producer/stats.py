"""Queue statistics: one pipeline of XLEN / XINFO / XREVRANGE / HGETALL replies, read
into plain data.

The stream and the consumer group may not exist yet (no job submitted, no consumer
started): those read as empty, not as errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio.client
import redis.client
import redis.exceptions

from producer.activity import (
    MAX_WINDOW_EVENTS,
    RecentActivity,
    count_events,
    live_beats,
    live_replicas,
    window_start_id,
)
from schemas.codec import as_text
from schemas.keys import Keys
from schemas.model_starts import StartFailures
from schemas.replicas import ConsumerHeartbeat, ReplicaHeartbeat
from schemas.tenants import TenantFigures


@dataclass(frozen=True)
class ConsumerStats:
    """One consumer of the group ``{P}:workers``."""

    name: str
    pending: int
    idle_ms: int
    # From its heartbeat in {P}:consumers (None: no fresh one, or the window is off).
    window_depth: int | None = None
    window_oldest_wait_s: float | None = None


@dataclass(frozen=True)
class QueueStats:
    """The state of one prefix's queue.

    ``lag`` is how many entries the group has not delivered yet (``None``: unknown, as
    Redis reports after some trims, or no group yet); ``pending`` how many were delivered
    and not yet acknowledged. ``recent`` counts the jobs' status events of the last
    minute; ``replicas`` are the model replicas whose heartbeat is fresh.
    """

    stream_length: int
    dead_letters: int
    group_exists: bool
    pending: int = 0
    lag: int | None = None
    consumers: list[ConsumerStats] = field(default_factory=list)
    recent: RecentActivity = field(default_factory=RecentActivity)
    replicas: list[ReplicaHeartbeat] = field(default_factory=list)
    # Failed starts of the model replicas since one last started (v1.4; None: no record).
    start_failures: StartFailures | None = None
    # Each tenant's jobs, summed over the live consumers' heartbeats (v1.4).
    tenants: dict[str, TenantFigures] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            **{
                name: value
                for name, value in asdict(self).items()
                if name not in ("replicas", "start_failures", "tenants")
            },
            "recent": self.recent.to_dict(),
            "tenants": {name: figures.model_dump() for name, figures in self.tenants.items()},
            "replicas": [beat.model_dump() for beat in self.replicas],
            "start_failures": self.start_failures and self.start_failures.model_dump(),
        }


def queue_commands(
    pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline,
    keys: Keys,
    *,
    now: float | None = None,
) -> None:
    """Queue on ``pipe`` the commands whose replies :func:`parse_stats` reads."""
    pipe.xlen(keys.jobs)
    pipe.xinfo_groups(keys.jobs)
    pipe.xinfo_consumers(keys.jobs, keys.group)
    pipe.xlen(keys.dead)
    start = window_start_id(time.time() if now is None else now)
    pipe.xrevrange(keys.events, max="+", min=start, count=MAX_WINDOW_EVENTS)
    pipe.hgetall(keys.replicas)
    pipe.hgetall(keys.consumers)
    pipe.hgetall(keys.model_starts)


def _missing(reply: Any) -> bool:
    """Whether a reply is the error of a stream or group that does not exist (yet)."""
    if not isinstance(reply, redis.exceptions.ResponseError):
        return False
    text = str(reply)
    return text.startswith("NOGROUP") or "no such key" in text


def _checked(reply: Any, empty: Any) -> Any:
    if _missing(reply):
        return empty
    if isinstance(reply, Exception):
        raise reply
    return reply


def parse_stats(keys: Keys, replies: Sequence[Any], *, now: float | None = None) -> QueueStats:
    """Read the replies of :func:`queue_commands` (errors in place) into :class:`QueueStats`."""
    empties: tuple[Any, ...] = (0, [], [], 0, [], {}, {}, {})
    length, groups, consumers, dead, events, replicas, consumer_beats, starts = (
        _checked(reply, empty) for reply, empty in zip(replies, empties, strict=True)
    )
    now = time.time() if now is None else now
    common: dict[str, Any] = {
        "stream_length": length,
        "dead_letters": dead,
        "recent": count_events(events),
        "replicas": live_replicas(replicas, now),
        "start_failures": StartFailures.from_hash(starts),
    }
    beats = {beat.consumer: beat for beat in live_beats(consumer_beats, now, ConsumerHeartbeat)}
    common["tenants"] = tenant_totals(beats.values())
    group = find_group(keys.group, groups)
    if group is None:
        return QueueStats(group_exists=False, **common)
    lag = group.get("lag")
    return QueueStats(
        group_exists=True,
        **common,
        pending=int(group.get("pending", 0)),
        lag=None if lag is None else int(lag),
        consumers=[_consumer(c, beats) for c in consumers],
    )


def _consumer(info: Mapping[str, Any], beats: Mapping[str, ConsumerHeartbeat]) -> ConsumerStats:
    """A row of ``XINFO CONSUMERS`` with the window figures of the consumer's heartbeat."""
    name = as_text(info["name"])
    beat = beats.get(name)
    return ConsumerStats(
        name=name,
        pending=int(info["pending"]),
        idle_ms=int(info["idle"]),
        window_depth=beat.window_depth if beat else None,
        window_oldest_wait_s=beat.window_oldest_wait_s if beat else None,
    )


def tenant_totals(beats: Iterable[ConsumerHeartbeat]) -> dict[str, TenantFigures]:
    """Each tenant's figures summed over consumers (the longest wait: the longest of any)."""
    totals: dict[str, TenantFigures] = {}
    for beat in beats:
        for name, figures in beat.tenants.items():
            total = totals.setdefault(name, TenantFigures())
            total.waiting += figures.waiting
            total.in_flight += figures.in_flight
            total.started += figures.started
            total.tokens += figures.tokens
            total.wait_s_total += figures.wait_s_total
            total.max_wait_s = max(total.max_wait_s, figures.max_wait_s)
    return totals


def find_group(name: str, groups: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The entry of consumer group ``name`` in an ``XINFO GROUPS`` reply, ``None`` if absent."""
    return next((g for g in groups if as_text(g["name"]) == name), None)
