"""The jobs a consumer has claimed but not started: its scheduling window.

The entries stay pending in the consumer group while they wait here, and the consumer
renews their leases like those of running jobs, so a consumer that dies with a full
window loses nothing: its entries are reclaimed (or resumed by its successor) as usual.
What starts next, and where, is :func:`workers.scheduling.window.plan`'s decision; this
class only feeds it and remembers what it needs between plans.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from schemas import Job
from workers.queue.store import Entry
from workers.scheduling.warm import WarmSets
from workers.scheduling.window import Drain, Limits, ReplicaView, WindowJob, plan


@dataclass(frozen=True)
class Waiting:
    """A claimed job waiting in the window."""

    entry: Entry
    job: Job
    arrived: float  # monotonic seconds


@dataclass(frozen=True)
class Running:
    """A job of this consumer in flight: where it was sent and with which adapter."""

    replica: str | None
    adapter: str | None


@dataclass
class WindowStats:
    """What the window did since start."""

    planned: int = 0  # plans made
    dispatched: int = 0  # jobs started from the window
    prefetches: int = 0  # prefetch hints sent
    max_wait_s: float = 0.0  # the longest a started job waited in the window


class ClaimedWindow:
    """Claimed jobs in claim order, and the plan of what to start from them."""

    def __init__(
        self,
        *,
        capacity: int,
        max_passover_s: float,
        warm: WarmSets,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_passover_s = max_passover_s
        self.warm = warm
        self.stats = WindowStats()
        self._clock = clock
        self._waiting: dict[str, Waiting] = {}  # by entry id, in claim order
        self._draining: dict[str, Drain] = {}
        self.prefetch: dict[str, tuple[str, ...]] = {}
        self.next_overdue_s: float | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._waiting

    @property
    def room(self) -> int:
        """Entries the window can still take."""
        return max(0, self.capacity - len(self._waiting))

    def entry_ids(self) -> list[str]:
        """The entries waiting (their leases must be renewed)."""
        return list(self._waiting)

    def add(self, entry: Entry, job: Job) -> None:
        """Hold ``entry`` (parsed as ``job``) until the plan starts it."""
        self._waiting.setdefault(entry.entry_id, Waiting(entry, job, self._clock()))

    def oldest_wait_s(self) -> float:
        """How long the job waiting longest has waited (0 for an empty window)."""
        now = self._clock()
        return max((now - w.arrived for w in self._waiting.values()), default=0.0)

    def take(self, running: Collection[Running], free: int) -> list[tuple[Waiting, str | None]]:
        """The jobs to start now and their replica (``None``: Serve picks), out of the
        window; also updates the prefetch hints and the next overdue time."""
        replicas = self.warm.replicas()
        now = self._clock()
        result = plan(
            [
                WindowJob(key, w.job.adapter_name, w.job.priority or 0, w.arrived)
                for key, w in self._waiting.items()
            ],
            _views(replicas, self.warm, running),
            Limits(
                free=free,
                max_jobs=max(1, math.ceil(free_total(running, free) / max(1, len(replicas)))),
                max_passover_s=self.max_passover_s,
            ),
            now=now,
            draining=self._draining,
        )
        self._draining = dict(result.draining)
        self.prefetch = dict(result.prefetch)
        self.next_overdue_s = result.next_overdue_s
        self.stats.planned += 1
        started = []
        for dispatch in result.dispatch:
            waiting = self._waiting.pop(dispatch.key)
            self.stats.max_wait_s = max(self.stats.max_wait_s, now - waiting.arrived)
            if dispatch.replica is not None and waiting.job.adapter_name is not None:
                self.warm.sent(dispatch.replica, waiting.job.adapter_name, time.time())
            started.append((waiting, dispatch.replica))
        self.stats.dispatched += len(started)
        return started


def free_total(running: Collection[Running], free: int) -> int:
    """The consumer's whole in-flight bound: what runs plus what may start."""
    return len(running) + free


def _views(
    replicas: Sequence[str], warm: WarmSets, running: Collection[Running]
) -> list[ReplicaView]:
    by_replica: dict[str | None, Counter[str | None]] = {}
    for job in running:
        by_replica.setdefault(job.replica, Counter())[job.adapter] += 1
    return [
        ReplicaView(
            id=replica,
            slots=warm.slots,
            warm=warm.warm(replica),
            running=by_replica.get(replica, Counter()),
        )
        for replica in replicas
    ]
