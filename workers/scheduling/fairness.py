"""Fair shares of generated tokens between tenants, within one priority level.

Each tenant has a virtual token counter (S-LoRA's VTC): the tokens its jobs were given,
divided by its weight. The *clock* is the waiting tenants' counters averaged by weight,
and a tenant's *lag* is its weight times how far its counter is behind the clock: the
tokens it is owed against a fluid fair share (negative: taken ahead of it). The lags of
the waiting tenants add up to zero.

A start of a job of ``n`` tokens lowers its tenant's lag by the part of ``n`` beyond the
tenant's share of it, and raises every other waiting tenant's by its share of ``n``.
:func:`fair_order` starts, each time, the tenant most owed *halfway through* its next
job (the midway order): the largest lag less half that drop. That keeps each tenant's
lag in a band of about a job, so over any run of starts a tenant that had jobs waiting
all along gets its weighted share less about one job's tokens: within one job with two
tenants always waiting, somewhat more with three or more (the unit tests allow one and a
half). Ordering by the counters alone (start-time fair queuing, as before) bounds it at
one job of its own plus a part of one job of every other tenant, and WF2Q's order (of
the tenants not ahead of the clock, the earliest virtual finish) did worse than the
midway order too: the figures of each are in docs/SERVING.md, "Tenants and fair shares".

No order holds exactly one job with three or more tenants: with weights 6, 4 and 1 and
jobs all of one size, a tenant's lag rises past a job over two starts without the 6
(2 x 6/11 of a job) or three without the 4 (3 x 4/11), so the 6 would have to take one
of every two starts and the 4 one of every three, which leaves none for the 1. Some lag
therefore keeps leaving every band a job wide, and over a long backlog some window of
1,000 tokens or more finds its tenant more than a job short (the lags take a bounded set
of values, so a low and a high each come back, as far apart as one likes).

A tenant alone takes every free slot (work-conserving). A tenant that had nothing waiting
does not bank the time it was idle: when its jobs come back, its counter is lifted to the
clock, so it shares from now on rather than taking the fleet until it has caught up.
"Nothing waiting" is noted job by job (:meth:`TenantShares.idle`), not only plan by plan:
a tenant whose last job started within a plan, while others took the rest of it, is idle
from that start; otherwise it would come back owed what the others took meanwhile (the
cause of most shortfalls past two jobs before).

A client may name any number of tenants, so the counters of idle tenants are not kept
forever: past :data:`MAX_IDLE_TENANTS` of them, the ones with the lowest counters are
forgotten (down to half as many). A tenant forgotten comes back like a new one, at the
clock: the same as kept, for one at or behind the clock then (it would be lifted to it);
one that was ahead of it (a job or so, from its last start) is forgiven that lead.

Jobs are charged when they start, at the tokens they may generate (``max_new_tokens``),
and settled when they end, with the tokens they did generate: a job that stops early
gives its tenant the difference back.

Pure: no Redis, no Ray; the consumer keeps one :class:`TenantShares` for its window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import partial
from typing import TypeVar

# Jobs without a tenant share as one tenant of this name (it is no valid tenant name).
DEFAULT_TENANT = ""
# Idle tenants whose counters are remembered, at most (see the module docstring).
MAX_IDLE_TENANTS = 4096

J = TypeVar("J")


def parse_weights(text: str) -> dict[str, float]:
    """``"a=2,b=1"`` as ``{"a": 2.0, "b": 1.0}``; ``ValueError`` naming a bad pair."""
    weights: dict[str, float] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not name.strip() or not weight > 0 or weight == float("inf"):
            raise ValueError(f"{pair!r} is not tenant=weight with a weight above 0")
        weights[name.strip()] = weight
    return weights


class TenantShares:
    """The tenants' virtual token counters and the weights they are divided by."""

    def __init__(
        self, weights: Mapping[str, float] | None = None, max_idle: int = MAX_IDLE_TENANTS
    ) -> None:
        self.weights = dict(weights or {})
        self.max_idle = max_idle
        self._counters: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._clock = 0.0  # the clock when a tenant last waited

    def weight(self, tenant: str) -> float:
        """The tenant's weight (1 when none is configured)."""
        return self.weights.get(tenant, 1.0)

    def counter(self, tenant: str) -> float:
        """Tokens given to the tenant's jobs so far, over its weight."""
        return self._counters.get(tenant, 0.0)

    def clock(self) -> float:
        """The waiting tenants' counters averaged by weight (when none waits, as it was
        when one last did): a tenant's lag is its weight times how far its counter is
        behind this."""
        if self._waiting:
            self._clock = weighted_mean(self._counters, self._waiting, self.weight)
        return self._clock

    def waiting(self, tenants: Collection[str]) -> None:
        """Note which tenants have jobs waiting now; the ones that had none get their
        counter lifted to the clock (see the module docstring)."""
        self._waiting &= set(tenants)
        floor = self.clock()
        for tenant in tenants:
            if tenant not in self._waiting:
                self._counters[tenant] = max(self.counter(tenant), floor)
        self._waiting = set(tenants)
        if len(self._counters) - len(self._waiting) > self.max_idle:
            self._forget_idle()

    def _forget_idle(self) -> None:
        """Forget the idle tenants with the lowest counters, down to half the bound."""
        idle = sorted(
            (tenant for tenant in self._counters if tenant not in self._waiting),
            key=self.counter,
        )
        for tenant in idle[: len(idle) - self.max_idle // 2]:
            del self._counters[tenant]

    def idle(self, tenant: str) -> None:
        """``tenant`` has no job waiting any more (its last one started)."""
        self.clock()
        self._waiting.discard(tenant)

    def charge(self, tenant: str, tokens: float) -> None:
        """Count ``tokens`` as given to ``tenant`` (negative: given back)."""
        self._counters[tenant] = self.counter(tenant) + tokens / self.weight(tenant)

    def settle(self, tenant: str, charged: int, used: int) -> None:
        """A job charged ``charged`` tokens ended having generated ``used``."""
        self.charge(tenant, used - charged)

    def snapshot(self) -> dict[str, float]:
        """Every tenant's counter."""
        return dict(self._counters)


def weighted_mean(
    counters: Mapping[str, float], tenants: Collection[str], weight: Callable[[str], float]
) -> float:
    """The ``tenants``' counters averaged by their weights."""
    total = sum(weight(t) for t in tenants)
    return sum(weight(t) * counters.get(t, 0.0) for t in tenants) / total


def fair_order(
    jobs: Sequence[J],
    shares: TenantShares,
    *,
    tenant: Callable[[J], str],
    tokens: Callable[[J], int],
) -> list[J]:
    """``jobs`` (of one priority, in the order they would go without tenants) in the
    order they should start: each time the tenant most owed halfway through its next job
    (see the module docstring); each tenant's jobs keep their order among themselves,
    and ties go to the job earlier in ``jobs``."""
    queues: dict[str, deque[tuple[int, J]]] = {}
    for index, job in enumerate(jobs):
        queues.setdefault(tenant(job), deque()).append((index, job))
    counters = {owner: shares.counter(owner) for owner in queues}
    order: list[J] = []
    while queues:
        total = sum(shares.weight(t) for t in queues)
        clock = weighted_mean(counters, queues, shares.weight)
        owed = partial(_owed_midway, queues, counters, shares, tokens, clock, total)
        owner = max(queues, key=owed)
        _, job = queues[owner].popleft()
        order.append(job)
        counters[owner] += tokens(job) / shares.weight(owner)
        if not queues[owner]:
            del queues[owner]
    return order


def _owed_midway(
    queues: Mapping[str, deque[tuple[int, J]]],
    counters: Mapping[str, float],
    shares: TenantShares,
    tokens: Callable[[J], int],
    clock: float,
    total: float,
    owner: str,
) -> tuple[float, int]:
    """What ``owner`` is owed halfway through its next job, then the job's place (earlier
    first): its lag less half of what the job takes beyond its own share of the job's
    tokens (a start lowers a tenant's lag by that much; the others' go up by their shares
    of it). ``clock``: the waiting tenants' counters averaged by weight; ``total``: their
    weights."""
    weight, (index, job) = shares.weight(owner), queues[owner][0]
    lag = weight * (clock - counters[owner])
    return (lag - (1 - weight / total) * tokens(job) / 2, -index)


def tenants_of(jobs: Iterable[J], tenant: Callable[[J], str]) -> set[str]:
    """The tenants that have a job among ``jobs``."""
    return {tenant(job) for job in jobs}
