"""What a queue consumer counts: typed records, read by attribute (heartbeat, metrics and the
deployment's ``stats()``), so that no reader guesses key names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from schemas.tenants import TenantFigures
from workers.queue.claimed import WindowStats


@dataclass
class ConsumerCounters:
    """Jobs of this consumer since it started."""

    started: int = 0
    finished: int = 0
    errors: int = 0
    reclaimed: int = 0  # entries claimed back from consumers that went silent


@dataclass(frozen=True)
class WindowFigures:
    """The scheduling window now: jobs waiting in it, and its counters."""

    depth: int
    oldest_wait_s: float
    replicas_known: int  # model replicas its scheduler sees
    stats: WindowStats
    tenants: dict[str, TenantFigures] = field(default_factory=dict)  # by tenant label


@dataclass(frozen=True)
class ConsumerStats:
    """A consumer's counters, its jobs in flight now, and its window (``None``: off)."""

    counters: ConsumerCounters
    in_flight: int
    window: WindowFigures | None

    def as_fields(self) -> dict[str, float]:
        """Flat, by name: the deployment's ``stats()`` answer for operators and tests."""
        fields: dict[str, float] = {**asdict(self.counters), "in_flight": self.in_flight}
        if self.window is not None:
            fields.update(
                window_depth=self.window.depth,
                window_oldest_wait_s=self.window.oldest_wait_s,
                window_max_wait_s=self.window.stats.max_wait_s,
                window_plans=self.window.stats.planned,
                window_dispatched=self.window.stats.dispatched,
                prefetches=self.window.stats.prefetches,
                replicas_known=self.window.replicas_known,
            )
        return fields
