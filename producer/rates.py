"""Rates between two readings of the queue's state (pure; ``loraq top`` draws them)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from producer.stats import QueueStats
from schemas.replicas import ReplicaHeartbeat

# Token rates are taken against the oldest reading of this many seconds.
RATE_WINDOW_S = 30.0


@dataclass(frozen=True)
class Throughput:
    """Jobs and tokens per second, and the share of finished jobs that failed.

    ``jobs_per_s`` and ``error_rate`` are over the status events' window (a minute);
    ``tokens_per_s`` between two heartbeats of each replica (``None``: no two yet).
    """

    jobs_per_s: float
    error_rate: float | None
    tokens_per_s: float | None
    tokens_per_s_by_replica: dict[str, float]


def token_rates(
    before: Sequence[ReplicaHeartbeat], after: Sequence[ReplicaHeartbeat]
) -> dict[str, float]:
    """Tokens per second of each replica present in both readings with two distinct beats.

    Timed by the heartbeats' own ``ts``, not by when they were read: a replica beats every
    few seconds, so two readings a second apart often see the same beat (then no rate).
    A counter that went down is a restarted replica under the same id: no rate either.
    """
    earlier = {beat.replica: beat for beat in before}
    rates = {}
    for beat in after:
        old = earlier.get(beat.replica)
        if old is None or beat.ts <= old.ts:
            continue
        grown = beat.backend.tokens_generated - old.backend.tokens_generated
        if grown >= 0:  # a restarted replica counts from 0 again
            rates[beat.replica] = grown / (beat.ts - old.ts)
    return rates


def throughput(before: QueueStats | None, after: QueueStats) -> Throughput:
    """The throughput shown with ``after``; ``before`` is an older reading, if any."""
    by_replica = token_rates(before.replicas, after.replicas) if before is not None else {}
    return Throughput(
        jobs_per_s=after.recent.jobs_per_s,
        error_rate=after.recent.error_rate,
        tokens_per_s=sum(by_replica.values()) if by_replica else None,
        tokens_per_s_by_replica=by_replica,
    )


@dataclass
class Readings:
    """The readings of the last ``window_s`` seconds; each new one is rated against the oldest."""

    window_s: float = RATE_WINDOW_S
    _readings: deque[tuple[float, QueueStats]] = field(default_factory=deque)

    def add(self, stats: QueueStats, now: float) -> Throughput:
        """Keep ``stats`` read at ``now`` (epoch seconds); the throughput it shows."""
        while self._readings and now - self._readings[0][0] > self.window_s:
            self._readings.popleft()
        before = self._readings[0][1] if self._readings else None
        self._readings.append((now, stats))
        return throughput(before, stats)
