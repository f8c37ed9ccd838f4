"""The jobs a consumer has claimed but not started: its scheduling window.

The entries stay pending in the consumer group while they wait here, and the consumer
renews their leases like those of running jobs, so a consumer that dies with a full
window loses nothing: its entries are reclaimed (or resumed by its successor) as usual.
What starts next, and where, is :func:`workers.scheduling.planner.plan`'s decision; this
class only feeds it and remembers what it needs between plans.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from schemas.replicas import ReplicaHeartbeat
from workers.queue.policy import Claim
from workers.queue.store import Entry
from workers.queue.tenants import TenantBook, tenant_of
from workers.scheduling.planner import Drain, Limits, ReplicaView, WindowJob, plan
from workers.scheduling.slot_ledger import Ledger


@dataclass(frozen=True)
class Waiting:
    """A claimed job waiting in the window."""

    entry: Entry
    claim: Claim
    arrived: float  # monotonic seconds


@dataclass(frozen=True)
class ReplicaPicture:
    """What a model replica published in its latest heartbeat."""

    warm: tuple[str, ...]  # adapters on its device
    slots: int  # its device adapter slots


@dataclass
class WindowStats:
    """What the window did since start."""

    planned: int = 0  # plans made
    dispatched: int = 0  # jobs started from the window
    prefetches: int = 0  # prefetch hints sent
    slot_refusals: int = 0  # planned starts the slot lease refused (another consumer was first)
    max_wait_s: float = 0.0  # the longest a started job waited in the window


class ClaimedWindow:
    """Claimed jobs in claim order, and the plan of what to start from them."""

    def __init__(
        self,
        *,
        capacity: int,
        max_passover_s: float,
        slots: int,
        tenants: TenantBook | None = None,
        horizon: int | None = None,
        fifo: bool = False,
        headroom: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        # In-flight places kept for a tenant under its fair share (the planner's headroom).
        self.headroom = headroom
        # The planner's FIFO policy: what is claimed starts in claim order, placed by Serve.
        self.fifo = fifo
        self.max_passover_s = max_passover_s
        self.slots = slots  # a replica's slots when its heartbeat does not say
        # The model replicas, as their latest heartbeats describe them.
        self.replicas: dict[str, ReplicaPicture] = {}
        self.stats = WindowStats()
        self.tenants = tenants or TenantBook()
        # Jobs of each tenant a plan looks at (its first, in claim order; None: all): a
        # window that holds several tenants' backlogs plans as fast as one of this size.
        self.horizon = horizon
        self._clock = clock
        self._waiting: dict[str, Waiting] = {}  # by entry id
        # The same jobs by tenant, each in its order of arrival: a plan reads each
        # tenant's first ``horizon`` without walking a deep window.
        self._by_tenant: dict[str, dict[str, Waiting]] = {}
        self._draining: dict[str, Drain] = {}
        # Bumped by whatever a plan reads from the window (its jobs, the replicas): with
        # the same version, places and ledger, a plan that started nothing would again.
        self._version = 0
        self._quiet: tuple[object, ...] | None = None  # what the last empty plan saw
        self._quiet_until: float | None = None  # when it becomes stale (overdue, a token)
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

    def room_for(self, free: int) -> int:
        """Entries to claim now, with ``free`` in-flight places: the room, and under FIFO
        no more than can start now (what cannot start waits in Redis, where any consumer
        can take it)."""
        if self.fifo:
            return max(0, min(free, self.capacity) - len(self._waiting))
        return self.room

    def entry_ids(self) -> list[str]:
        """The entries waiting, in their order of arrival (their leases must be renewed)."""
        return [w.entry.entry_id for w in sorted(self._waiting.values(), key=_arrival)]

    def add(self, entry: Entry, claim: Claim) -> None:
        """Hold ``entry`` (read as ``claim``) until the plan starts it."""
        if entry.entry_id not in self._waiting:
            self._hold(Waiting(entry, claim, self._clock()))

    def _hold(self, waiting: Waiting) -> None:
        self._version += 1
        key = waiting.entry.entry_id
        self._waiting[key] = waiting
        self._by_tenant.setdefault(tenant_of(waiting.claim), {})[key] = waiting

    def _release(self, key: str) -> Waiting:
        self._version += 1
        waiting = self._waiting.pop(key)
        tenant = tenant_of(waiting.claim)
        queue = self._by_tenant[tenant]
        del queue[key]
        if not queue:
            del self._by_tenant[tenant]
        return waiting

    def oldest_wait_s(self) -> float:
        """How long the job waiting longest has waited (0 for an empty window)."""
        now = self._clock()
        return max((now - w.arrived for w in self._waiting.values()), default=0.0)

    def see(self, beats: Iterable[ReplicaHeartbeat]) -> None:
        """The live replicas' latest heartbeats: what each holds, and its slots."""
        self._version += 1
        self.replicas = {
            beat.replica: ReplicaPicture(tuple(beat.adapters), beat.slots or self.slots)
            for beat in beats
        }

    def saw(self, replica: str, warm: tuple[str, ...]) -> None:
        """A job's output said what ``replica`` holds on its device now (fresher than its
        heartbeat, which may be seconds old)."""
        picture = self.replicas.get(replica)
        if picture is not None:
            self._version += 1
            self.replicas[replica] = ReplicaPicture(warm, picture.slots)

    def take(self, ledger: Ledger, free: int, max_jobs: int) -> list[tuple[Waiting, str | None]]:
        """The jobs to start now and their replica (``None``: Serve picks), out of the
        window; also updates the prefetch hints and the next overdue time.

        ``ledger`` is every consumer's jobs in flight per replica (the slot lease), so the
        plan keeps each replica's slots and ``max_jobs`` for the cluster, not for this
        consumer alone; ``free`` is what this consumer may start.
        """
        now = self._clock()
        # Nothing changed since a plan that started nothing (e.g. one tenant alone, only
        # the headroom free): the same plan again would start nothing; spare the CPU.
        in_flight = self.tenants.in_flight()
        seen = (self._version, free, max_jobs, _frozen(ledger), sorted(in_flight.items()))
        if seen == self._quiet and (self._quiet_until is None or now < self._quiet_until):
            return []
        jobs = self._candidates()
        tenants = {job.tenant for job in jobs}
        self.tenants.planning(tenants)
        # Jobs of a tenant at its limits wait here (held back, not dropped).
        allowed = self.tenants.allowances(tenants, now)
        result = plan(
            [job for job in jobs if allowed.get(job.tenant, 1) > 0],
            [
                ReplicaView(rid, picture.slots, picture.warm, ledger.get(rid, Counter()))
                for rid, picture in self.replicas.items()
            ],
            Limits(
                free=free,
                max_jobs=max_jobs,
                max_passover_s=self.max_passover_s,
                headroom=self.headroom,
            ),
            now=now,
            draining=self._draining,
            shares=self.tenants.shares,
            in_flight=in_flight,
            fifo=self.fifo,
        )
        self._draining = dict(result.draining)
        self.prefetch = dict(result.prefetch)
        self.next_overdue_s = result.next_overdue_s
        self.stats.planned += 1
        started = []
        for dispatch in result.dispatch:
            tenant = tenant_of(self._waiting[dispatch.key].claim)
            if tenant in allowed:
                if allowed[tenant] <= 0:
                    continue  # the plan gave its tenant more than its limits allow now
                allowed[tenant] -= 1
            started.append((self._release(dispatch.key), dispatch.replica))
        held = [tenant for tenant, left in allowed.items() if left <= 0]
        ready_s = self.tenants.ready_in_s(held, now)
        if ready_s is not None:  # plan again when a held tenant has a token
            self.next_overdue_s = min(ready_s, self.next_overdue_s or ready_s)
        self._quiet = None if started else seen
        self._quiet_until = None if self.next_overdue_s is None else now + self.next_overdue_s
        return started

    def _candidates(self) -> list[WindowJob]:
        """The jobs a plan looks at: each tenant's first ``horizon``, in arrival order."""
        jobs = [
            WindowJob(
                key,
                waiting.claim.adapter,
                waiting.claim.priority,
                waiting.arrived,
                tenant,
                waiting.claim.tokens,
            )
            for tenant, queue in self._by_tenant.items()
            for key, waiting in itertools.islice(queue.items(), None if self.fifo else self.horizon)
        ]
        jobs.sort(key=lambda job: job.arrived)  # stable: claim order among equal times
        return jobs

    def started(self, waiting: Waiting) -> None:
        """A job :meth:`take` gave out has started."""
        waited_s = self._clock() - waiting.arrived
        self.stats.dispatched += 1
        self.stats.max_wait_s = max(self.stats.max_wait_s, waited_s)
        tenant = tenant_of(waiting.claim)
        self.tenants.started(
            waiting.entry.entry_id,
            tenant,
            waiting.claim.tokens,
            waited_s,
            self._clock(),
            last=tenant not in self._by_tenant,
        )

    def waiting_by_tenant(self) -> Counter[str]:
        """Jobs in the window now, by tenant."""
        return Counter({tenant: len(queue) for tenant, queue in self._by_tenant.items()})

    def refused(self, waiting: Waiting) -> None:
        """A job :meth:`take` gave out could not start (the slot lease refused it): it
        waits again, in its place by arrival, for the next plan."""
        self.stats.slot_refusals += 1
        self._hold(waiting)
        tenant = tenant_of(waiting.claim)
        queue = self._by_tenant[tenant]
        self._by_tenant[tenant] = dict(sorted(queue.items(), key=lambda item: _arrival(item[1])))


def _frozen(ledger: Ledger) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    """``ledger`` as a value to compare."""
    return tuple(
        (replica, tuple(sorted((str(adapter), count) for adapter, count in counts.items())))
        for replica, counts in sorted(ledger.items())
    )


def _arrival(waiting: Waiting) -> float:
    return waiting.arrived


def job_cap(max_in_flight: int, consumers: int, replicas: int, max_ongoing: int) -> int:
    """Jobs one model replica runs at once: an even share of every consumer's in-flight
    bound (so that a hot adapter spreads over replicas), within Serve's limit."""
    share = math.ceil(max_in_flight * max(1, consumers) / max(1, replicas))
    return max(1, min(share, max_ongoing))
