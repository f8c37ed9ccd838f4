"""Fair shares of generated tokens between tenants, within one priority level.

Each tenant has a virtual token counter (S-LoRA's VTC): the tokens its jobs were given,
divided by its weight. Among jobs of one priority, :func:`fair_order` puts each job at
its tenant's counter plus the tokens of that tenant's jobs ahead of it (over the weight):
its virtual start, as in start-time fair queuing. The tenant that has used least of its
share therefore goes next, and a tenant alone takes every free slot: nothing waits for a
share (work-conserving). Over any run of starts, a tenant that had jobs waiting all along
gets its weighted share less at most two jobs' tokens (the bound of fair queuing: one job
of its own and one of another tenant straddle the run's ends).

A tenant that had nothing waiting does not bank the time it was idle: when its jobs come
back, its counter is lifted to the lowest counter of the tenants already waiting (or to
the counter of the last job given out, when none waits), so it shares from now on rather
than taking the fleet until it has caught up.

Jobs are charged when they start, at the tokens they may generate (``max_new_tokens``),
and settled when they end, with the tokens they did generate: a job that stops early
gives its tenant the difference back.

Pure: no Redis, no Ray; the consumer keeps one :class:`TenantShares` for its window.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar

# Jobs without a tenant share as one tenant of this name (it is no valid tenant name).
DEFAULT_TENANT = ""

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
    """The tenants' virtual token counters, and the weights they are divided by."""

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        self._counters: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._last = 0.0  # the counter of the tenant charged last

    def weight(self, tenant: str) -> float:
        """The tenant's weight (1 when none is configured)."""
        return self.weights.get(tenant, 1.0)

    def counter(self, tenant: str) -> float:
        """Tokens given to the tenant's jobs so far, over its weight."""
        return self._counters.get(tenant, 0.0)

    def waiting(self, tenants: Collection[str]) -> None:
        """Note which tenants have jobs waiting now; the ones that had none get their
        counter lifted (see the module docstring)."""
        still = [t for t in self._waiting if t in tenants]
        floor = min((self.counter(t) for t in still), default=self._last)
        for tenant in tenants:
            if tenant not in self._waiting:
                self._counters[tenant] = max(self.counter(tenant), floor)
        self._waiting = set(tenants)

    def charge(self, tenant: str, tokens: float) -> None:
        """Count ``tokens`` as given to ``tenant`` (negative: given back)."""
        self._counters[tenant] = self.counter(tenant) + tokens / self.weight(tenant)
        if tokens > 0:
            self._last = self._counters[tenant]

    def settle(self, tenant: str, charged: int, used: int) -> None:
        """A job charged ``charged`` tokens ended having generated ``used``."""
        self.charge(tenant, used - charged)

    def snapshot(self) -> dict[str, float]:
        """Every tenant's counter."""
        return dict(self._counters)


def fair_order(
    jobs: Sequence[J],
    shares: TenantShares,
    *,
    tenant: Callable[[J], str],
    tokens: Callable[[J], int],
) -> list[J]:
    """``jobs`` (of one priority, in the order they would go without tenants) in order of
    their virtual start: each tenant's jobs keep their order among themselves."""
    ahead: dict[str, float] = {}
    keyed: list[tuple[float, int, J]] = []
    for index, job in enumerate(jobs):
        owner = tenant(job)
        start = ahead.get(owner, shares.counter(owner))
        ahead[owner] = start + tokens(job) / shares.weight(owner)
        keyed.append((start, index, job))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [job for _, _, job in keyed]


def tenants_of(jobs: Iterable[J], tenant: Callable[[J], str]) -> set[str]:
    """The tenants that have a job among ``jobs``."""
    return {tenant(job) for job in jobs}
