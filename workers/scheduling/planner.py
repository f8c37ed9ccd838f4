"""Which claimed jobs start now, and on which model replica: the one scheduling decision.

The consumer claims a bounded window of jobs from the stream and asks :func:`plan` what
to start whenever something changes (a job arrived, a job ended, a job became overdue).
Nothing here talks to Redis, Ray or torch: the consumer carries the plan out.

The rules, strongest first:

1. **Capacity.** At most ``free`` jobs start; a replica runs at most ``max_jobs`` jobs at
   once; a replica never runs jobs of more distinct adapters at once than its device
   slots, so its adapter cache never waits for a slot.
2. **Aging.** A job that has waited ``max_passover_s`` goes before every job of its
   tenant that has not, and before every job of a lower priority.
   If no replica has a slot for its adapter, one replica stops taking new jobs of the
   adapter with the fewest jobs running there ("draining" it), so that a slot frees
   within one job's run time; the choice is kept from plan to plan. One drain per
   adapter: its slot takes every overdue job of the adapter.
3. **Priority.** Higher first.
4. **Fair shares.** Within one priority (overdue jobs count at the top one), tenants
   take turns by their weighted share of generated tokens
   (:mod:`workers.scheduling.fairness`); a tenant alone takes all. With one tenant,
   aging is as strict as ever; between tenants, the shares bound the wait instead.
5. **Warm first.** Within one tenant's jobs of one priority, jobs whose adapter is on some
   replica (and base model jobs) go before jobs that need a load.
6. **FIFO** among equals (window order, which is the order the consumer claimed them).

The FIFO policy (the window off, ``fifo=True``) keeps only rule 1's ``free``: jobs start
in the order claimed, and Serve's router places them.

Headroom: the last ``headroom`` of the consumer's free places, and of the replicas' free
rows, go only to a job whose tenant runs fewer jobs here than its weighted share of the
consumer's places while another tenant has jobs here too. A tenant over its share (or
alone) fills the rest. So a tenant that comes back to a fleet full of another's backlog
starts at once, its job joining the replica's running batch, instead of waiting for one
of the other tenant's jobs to end (there is no preemption); the cost is ``headroom``
places left idle while one tenant has the fleet to itself.

Placement: a job goes to the least loaded replica that holds its adapter; when none of
those can take it, to the least loaded replica with a free slot (a load). That is how
jobs of one adapter group onto the replica that holds it, and how an adapter with more
backlog than one replica can take spreads over more. Ties between cold replicas go to
the adapter's rendezvous home, the replica the prefetch hints warm it on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workers.scheduling.fairness import DEFAULT_TENANT, TenantShares, fair_order
from workers.scheduling.rendezvous import rendezvous_score


@dataclass(frozen=True)
class WindowJob:
    """A claimed job waiting to start."""

    key: str  # the stream entry id
    adapter: str | None  # None: the base model
    priority: int
    arrived: float  # monotonic seconds when it entered the window
    tenant: str = DEFAULT_TENANT
    tokens: int = 0  # what it may generate (max_new_tokens): its tenant's charge


@dataclass(frozen=True)
class ReplicaView:
    """What a model replica holds and runs, as the consumer sees it."""

    id: str
    slots: int  # device adapter slots
    warm: tuple[str, ...]  # adapters on the device
    running: Mapping[str | None, int]  # this consumer's jobs in flight there, by adapter


@dataclass(frozen=True)
class Limits:
    """The bounds a plan respects."""

    free: int  # jobs the consumer may start now
    max_jobs: int  # jobs in flight per replica
    max_passover_s: float  # the aging bound
    # In-flight places kept free for a tenant below its fair share (see :func:`plan`).
    headroom: int = 0


@dataclass(frozen=True)
class Dispatch:
    """Start the job ``key`` on ``replica`` (``None``: no replica known, Serve chooses)."""

    key: str
    replica: str | None


@dataclass(frozen=True)
class Drain:
    """``replica`` takes no new jobs of ``adapter`` until the overdue job gets a slot."""

    replica: str
    adapter: str


@dataclass(frozen=True)
class Plan:
    """What to do now."""

    dispatch: tuple[Dispatch, ...]
    # Overdue job key -> the adapter drained for it; hand back to the next plan.
    draining: Mapping[str, Drain]
    # Replica id -> adapters the window needs that it should warm before their jobs go.
    prefetch: Mapping[str, tuple[str, ...]]
    # Seconds until the next waiting job becomes overdue (plan again then), if any.
    next_overdue_s: float | None


@dataclass
class _Replica:
    """A replica's load while a plan is being made."""

    id: str
    slots: int
    warm: set[str]
    running: Counter[str | None] = field(default_factory=Counter)

    @property
    def jobs(self) -> int:
        return sum(self.running.values())

    def active(self) -> set[str]:
        """Adapters with jobs in flight here (each holds a device slot)."""
        return {name for name, count in self.running.items() if name is not None and count > 0}

    def holds(self, adapter: str) -> bool:
        return adapter in self.warm or self.running[adapter] > 0

    def has_free_slot(self, adapter: str) -> bool:
        return adapter in self.active() or len(self.active()) < self.slots


def plan(
    window: Sequence[WindowJob],
    replicas: Sequence[ReplicaView],
    limits: Limits,
    *,
    now: float,
    draining: Mapping[str, Drain] | None = None,
    shares: TenantShares | None = None,
    in_flight: Mapping[str, int] | None = None,
    fifo: bool = False,
) -> Plan:
    """The jobs of ``window`` to start now and where (see the module docstring);
    ``shares`` are the tenants' counters (``None``: one tenant), which the caller charges
    for the jobs dispatched; ``in_flight`` is the consumer's jobs running, by tenant (the
    headroom goes by it); ``fifo``: the FIFO policy."""
    if fifo:
        return Plan(
            tuple(Dispatch(job.key, None) for job in window[: max(limits.free, 0)]), {}, {}, None
        )
    overdue = {job.key for job in window if now - job.arrived >= limits.max_passover_s}
    shares = shares or TenantShares()
    headroom = _Headroom(window, limits, shares, in_flight or {})
    if not replicas:
        # Nothing known about the replicas yet: Serve's router places them, in order.
        unplaced = _unplaced(_ordered(window, {}, overdue, shares), limits.free, headroom)
        return Plan(unplaced, {}, {}, _next_overdue(window, unplaced, limits, now))
    state = {view.id: _state_of(view) for view in replicas}
    kept = _valid_drains(draining or {}, state, {job.key for job in window})
    # The adapters a drain already frees a slot for: one drain per adapter, however many
    # of its jobs are overdue (a second would empty a slot the first one's load fills).
    awaited = {job.adapter for job in window if job.key in kept}
    starts: list[Dispatch] = []
    # The replicas' free rows: a start takes one, nothing here frees one. With none left
    # (or no free place) no job can start and none may drain (the headroom admits none
    # with no place), so the window is not even ordered: a full fleet under a flood
    # plans on every job's end.
    rows = sum(max(0, limits.max_jobs - replica.jobs) for replica in state.values())
    can_start = rows > 0 and limits.free > 0
    for job in _ordered(window, state, overdue, shares) if can_start else ():
        if len(starts) >= limits.free or rows == 0:
            break
        if not headroom.admits(job, min(limits.free - len(starts), rows)):
            continue
        target = _place(job, state, limits, set(kept.values()))
        if target is not None:
            starts.append(Dispatch(job.key, target.id))
            rows -= 1
            headroom.started(job)
            target.running[job.adapter] += 1
            if job.adapter is not None:
                target.warm.add(job.adapter)
            kept.pop(job.key, None)
        elif job.key in overdue and job.adapter is not None and job.adapter not in awaited:
            drain = _choose_drain(job.adapter, state, set(kept.values()))
            if drain is not None:
                kept[job.key] = drain
                awaited.add(job.adapter)
    started = {start.key for start in starts}
    return Plan(
        dispatch=tuple(starts),
        draining=kept,
        prefetch=_prefetch(window, started, state),
        next_overdue_s=_next_overdue(window, starts, limits, now),
    )


def _unplaced(ordered: Sequence[WindowJob], free: int, headroom: _Headroom) -> tuple[Dispatch, ...]:
    """The first ``free`` jobs of ``ordered`` the headroom admits, for Serve to place."""
    starts: list[Dispatch] = []
    for job in ordered:
        if len(starts) >= free:
            break
        if headroom.admits(job, free - len(starts)):
            starts.append(Dispatch(job.key, None))
            headroom.started(job)
    return tuple(starts)


class _Headroom:
    """Which jobs may take the last ``limits.headroom`` free places (see the module
    docstring): those of a tenant under its weighted share of the consumer's places."""

    def __init__(
        self,
        window: Sequence[WindowJob],
        limits: Limits,
        shares: TenantShares,
        in_flight: Mapping[str, int],
    ) -> None:
        self.reserve = limits.headroom
        self.running = Counter({t: n for t, n in in_flight.items() if n > 0})
        present = {job.tenant for job in window} | set(self.running)
        weights = {tenant: shares.weight(tenant) for tenant in present}
        places = limits.free + sum(self.running.values())
        total = sum(weights.values())
        # With one tenant there is nobody to keep places for: it takes all but the reserve.
        self.share = {t: places * w / total for t, w in weights.items()} if len(present) > 1 else {}

    def admits(self, job: WindowJob, left: int) -> bool:
        """Whether ``job`` may start with ``left`` places free (of the consumer's and of
        the replicas' rows, whichever is fewer)."""
        if left > self.reserve:
            return True
        return left > 0 and self.running[job.tenant] < self.share.get(job.tenant, 0.0)

    def started(self, job: WindowJob) -> None:
        self.running[job.tenant] += 1


def _state_of(view: ReplicaView) -> _Replica:
    return _Replica(view.id, view.slots, set(view.warm), Counter(view.running))


def _ordered(
    window: Sequence[WindowJob],
    state: Mapping[str, _Replica],
    overdue: set[str],
    shares: TenantShares,
) -> list[WindowJob]:
    """Priority levels, highest first (overdue jobs at the top), tenants' fair shares
    within each; within a tenant overdue first (oldest first), then priority, warm
    before cold, FIFO."""

    def cold(job: WindowJob) -> bool:
        # With no replica known, nothing is known to be warm either: no job is "cold".
        return (
            bool(state)
            and job.adapter is not None
            and not any(r.holds(job.adapter) for r in state.values())
        )

    ranked = sorted(
        enumerate(window),
        key=lambda item: (
            item[1].key not in overdue,
            item[1].arrived if item[1].key in overdue else 0.0,
            -item[1].priority,
            cold(item[1]),
            item[0],
        ),
    )
    # Tenants share each priority level. An overdue job competes at the top level, ahead
    # of its own tenant's other jobs (the aging bound, within a tenant) but beside other
    # tenants' jobs by their shares: one tenant's backlog, all of it overdue, must not
    # hold back another tenant's new jobs (fair shares bound the wait between tenants).
    top = max((job.priority for job in window), default=0)
    levels: dict[int, list[WindowJob]] = {}
    for _, job in ranked:
        levels.setdefault(top if job.key in overdue else job.priority, []).append(job)
    return [
        job
        for level in sorted(levels, reverse=True)
        for job in fair_order(levels[level], shares, tenant=_tenant, tokens=_tokens)
    ]


def _tenant(job: WindowJob) -> str:
    return job.tenant


def _tokens(job: WindowJob) -> int:
    return job.tokens


def _place(
    job: WindowJob, state: Mapping[str, _Replica], limits: Limits, drains: set[Drain]
) -> _Replica | None:
    """The replica ``job`` goes to, or ``None`` when none can take it now."""
    open_ = [r for r in state.values() if r.jobs < limits.max_jobs]
    if job.adapter is None:
        return min(open_, key=lambda r: (r.jobs, -rendezvous_score(job.key, r.id)), default=None)
    adapter = job.adapter
    usable = [r for r in open_ if Drain(r.id, adapter) not in drains]
    warm = [r for r in usable if r.holds(adapter) and r.has_free_slot(adapter)]
    if warm:
        return min(warm, key=lambda r: (r.jobs, -rendezvous_score(adapter, r.id)))
    cold = [r for r in usable if r.has_free_slot(adapter)]
    return min(cold, key=lambda r: (r.jobs, -rendezvous_score(adapter, r.id)), default=None)


def _choose_drain(adapter: str, state: Mapping[str, _Replica], drains: set[Drain]) -> Drain | None:
    """The adapter (and replica) whose slot frees soonest if it takes no new jobs.

    ``None`` when a slot is free somewhere: then only capacity is short, and capacity
    frees within one job's run time anyway, the overdue job first in line.
    """
    if any(replica.has_free_slot(adapter) for replica in state.values()):
        return None
    candidates = [
        (replica.running[other], replica.id, other)
        for replica in state.values()
        for other in replica.active()
        if other != adapter and Drain(replica.id, other) not in drains
    ]
    if not candidates:
        return None
    _, replica_id, other = min(candidates)
    return Drain(replica_id, other)


def _valid_drains(
    draining: Mapping[str, Drain], state: Mapping[str, _Replica], waiting: set[str]
) -> dict[str, Drain]:
    """The drains of the last plan still needed: their job waits, the adapter still runs."""
    return {
        key: drain
        for key, drain in draining.items()
        if key in waiting
        and drain.replica in state
        and state[drain.replica].running[drain.adapter] > 0
    }


def _prefetch(
    window: Sequence[WindowJob], started: set[str], state: Mapping[str, _Replica]
) -> dict[str, tuple[str, ...]]:
    """Adapters of waiting jobs held by no replica, each hinted to its rendezvous home
    (at most as many per replica as it has slots: more would evict each other)."""
    hints: dict[str, list[str]] = {replica_id: [] for replica_id in state}
    room = sum(replica.slots for replica in state.values())  # hints still to give
    seen: set[str] = set()
    for job in window:
        if room <= 0:
            break
        adapter = job.adapter
        if job.key in started or adapter is None or adapter in seen:
            continue
        seen.add(adapter)
        if any(replica.holds(adapter) for replica in state.values()):
            continue
        home = max(state.values(), key=lambda r: rendezvous_score(adapter, r.id))
        if len(hints[home.id]) < home.slots:
            hints[home.id].append(adapter)
            room -= 1
    return {replica_id: tuple(names) for replica_id, names in hints.items() if names}


def _next_overdue(
    window: Sequence[WindowJob], starts: Sequence[Dispatch], limits: Limits, now: float
) -> float | None:
    started = {start.key for start in starts}
    waits = [
        job.arrived + limits.max_passover_s - now
        for job in window
        if job.key not in started and job.arrived + limits.max_passover_s > now
    ]
    return min(waits, default=None)
