"""What the workers did lately: status events of the last minute, and live model replicas.

Both are read in the same pipeline as the queue statistics (:mod:`producer.stats`):
``XREVRANGE {P}:events`` over a window, and ``HGETALL {P}:replicas``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic

from schemas.codec import as_text, decode_fields
from schemas.records import FINAL_STATUSES, JobStatus
from schemas.replicas import Heartbeat, ReplicaHeartbeat

B = TypeVar("B", bound=Heartbeat)
WINDOW_S = 60.0
# Past this many events in the window, counts are of the newest ones only (``truncated``).
MAX_WINDOW_EVENTS = 50_000
_FINAL = {status.value for status in FINAL_STATUSES}


@dataclass(frozen=True)
class RecentActivity:
    """Status events of every job over the last ``window_s`` seconds, counted by status."""

    window_s: float = WINDOW_S
    by_status: dict[str, int] = field(default_factory=dict)
    truncated: bool = False

    @property
    def finished(self) -> int:
        """Jobs that reached a final status in the window."""
        return sum(n for status, n in self.by_status.items() if status in _FINAL)

    @property
    def jobs_per_s(self) -> float:
        """Finished jobs per second over the window."""
        return self.finished / self.window_s

    @property
    def error_rate(self) -> float | None:
        """The share of finished jobs that failed; ``None`` when none finished."""
        if not self.finished:
            return None
        return self.by_status.get(JobStatus.FAILED.value, 0) / self.finished

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output, the derived figures included."""
        return {
            "window_s": self.window_s,
            "by_status": dict(self.by_status),
            "truncated": self.truncated,
            "finished": self.finished,
            "jobs_per_s": self.jobs_per_s,
            "error_rate": self.error_rate,
        }


def window_start_id(now: float, window_s: float = WINDOW_S) -> str:
    """The stream entry ID at which a window of ``window_s`` seconds ending at ``now`` opens."""
    return f"{int((now - window_s) * 1000)}-0"


def count_events(
    entries: Sequence[tuple[Any, Mapping[Any, Any]]],
    *,
    window_s: float = WINDOW_S,
    limit: int = MAX_WINDOW_EVENTS,
) -> RecentActivity:
    """Count ``XREVRANGE`` entries of ``{P}:events`` (read with ``COUNT limit``) by status."""
    counts = Counter(decode_fields(fields).get("status", "") for _, fields in entries)
    counts.pop("", None)
    return RecentActivity(
        window_s=window_s, by_status=dict(sorted(counts.items())), truncated=len(entries) >= limit
    )


def live_beats(fields: Mapping[Any, Any], now: float, model: type[B]) -> list[B]:
    """The heartbeats of ``HGETALL`` of a heartbeat hash that are fresh at ``now``, by name.

    Entries that do not parse (a writer of another version) are skipped: the hash is
    informational and must never break a reader.
    """
    found = []
    for value in fields.values():
        try:
            beat = model.model_validate_json(as_text(value))
        except pydantic.ValidationError:
            continue
        if beat.is_fresh(now):
            found.append(beat)
    return sorted(found, key=lambda beat: beat.name)


def stale_fields(fields: Mapping[Any, Any], now: float, model: type[Heartbeat]) -> list[str]:
    """The fields of a heartbeat hash whose writer is gone (or whose value is unreadable)."""
    live = {beat.name for beat in live_beats(fields, now, model)}
    return [as_text(name) for name in fields if as_text(name) not in live]


def live_replicas(fields: Mapping[Any, Any], now: float) -> list[ReplicaHeartbeat]:
    """The model replicas of ``HGETALL {P}:replicas`` that are fresh at ``now``."""
    return live_beats(fields, now, ReplicaHeartbeat)


def stale_replicas(fields: Mapping[Any, Any], now: float) -> list[str]:
    """The fields of ``{P}:replicas`` whose replica is gone (or whose value is unreadable)."""
    return stale_fields(fields, now, ReplicaHeartbeat)
