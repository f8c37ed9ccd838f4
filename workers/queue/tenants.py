"""A consumer's book of tenants: the fair-share counters its plans read, what each job
that started was charged, and the per-tenant figures its heartbeat and metrics show.

The policies are :mod:`workers.scheduling.fairness` and
:mod:`workers.scheduling.tenant_limits`; this keeps their state between plans.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping

from schemas import Job
from schemas.tenants import TenantFigures, tenant_label
from workers.scheduling.fairness import DEFAULT_TENANT, TenantShares
from workers.scheduling.tenant_limits import TenantGate, TenantLimits


def tenant_of(job: Job) -> str:
    """The tenant whose share ``job`` counts against."""
    return job.tenant or DEFAULT_TENANT


class TenantBook:
    """Counters and figures per tenant; jobs are known by their entry id."""

    def __init__(
        self, weights: Mapping[str, float] | None = None, limits: TenantLimits | None = None
    ) -> None:
        self.shares = TenantShares(weights)
        self.gate = TenantGate(limits or TenantLimits())
        self._charged: dict[str, tuple[str, int]] = {}  # entry id -> (tenant, tokens)
        self._figures: dict[str, TenantFigures] = {}

    def _of(self, tenant: str) -> TenantFigures:
        return self._figures.setdefault(tenant, TenantFigures())

    def planning(self, waiting: Collection[str]) -> None:
        """Before a plan: the tenants with jobs in the window now."""
        self.shares.waiting(waiting)

    def allowances(self, tenants: Collection[str], now: float) -> dict[str, int]:
        """Jobs each of ``tenants`` may start now under the limits (only limited ones)."""
        return self.gate.allowances(tenants, self.in_flight(), now)

    def ready_in_s(self, held: Collection[str], now: float) -> float | None:
        """Seconds until a tenant held back by its rate may start a job again."""
        return self.gate.ready_in_s(held, now)

    def started(
        self,
        entry_id: str,
        tenant: str,
        tokens: int,
        waited_s: float,
        now: float,
        *,
        last: bool = False,
    ) -> None:
        """A job started: its tenant is charged ``tokens`` until it ends; ``last``: the
        tenant has no other job waiting now."""
        self.shares.charge(tenant, tokens)
        if last:
            self.shares.idle(tenant)
        self.gate.started(tenant, now)
        self._charged[entry_id] = (tenant, tokens)
        figures = self._of(tenant)
        figures.started += 1
        figures.wait_s_total += waited_s
        figures.max_wait_s = max(figures.max_wait_s, waited_s)

    def ended(self, entry_id: str, generated: int) -> None:
        """A started job ended having generated ``generated`` tokens (0: none, e.g. it
        failed or was cancelled before its generation): the charge is settled."""
        charged = self._charged.pop(entry_id, None)
        if charged is None:
            return  # started outside the window (resumed, or the window off)
        tenant, tokens = charged
        self.shares.settle(tenant, tokens, generated)
        self._of(tenant).tokens += generated

    def in_flight(self) -> Counter[str]:
        """Jobs started from the window and not ended, by tenant."""
        return Counter(tenant for tenant, _ in self._charged.values())

    def figures(self, waiting: Counter[str]) -> dict[str, TenantFigures]:
        """Every tenant seen, by its label, with ``waiting`` (jobs in the window by tenant)
        filled in."""
        running = self.in_flight()
        for tenant in waiting:
            self._of(tenant)
        return {
            tenant_label(tenant): figures.model_copy(
                update={"waiting": waiting.get(tenant, 0), "in_flight": running.get(tenant, 0)}
            )
            for tenant, figures in self._figures.items()
        }
