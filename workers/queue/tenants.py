"""A consumer's book of tenants: the fair-share counters its plans read, what each job
that started was charged, and the per-tenant figures its heartbeat and metrics show
(by label: past a cap, tenants share one; see :mod:`workers.queue.tenant_labels`).

The policies are :mod:`workers.scheduling.fairness` and
:mod:`workers.scheduling.tenant_limits`; this keeps their state between plans.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping

from schemas.tenants import TenantFigures
from workers.queue.policy import Claim
from workers.queue.tenant_labels import TenantLabels
from workers.scheduling.fairness import DEFAULT_TENANT, TenantShares
from workers.scheduling.tenant_limits import TenantGate, TenantLimits


def tenant_of(claim: Claim) -> str:
    """The tenant whose share the claimed job counts against."""
    return claim.tenant or DEFAULT_TENANT


class TenantBook:
    """Counters and figures per tenant; jobs are known by their entry id."""

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        limits: TenantLimits | None = None,
        labels: TenantLabels | None = None,
    ) -> None:
        self.shares = TenantShares(weights)
        self.gate = TenantGate(limits or TenantLimits())
        # The metrics' labels too (one chooser per process: the two agree).
        self.labels = labels if labels is not None else TenantLabels(weights or ())
        self._charged: dict[str, tuple[str, int]] = {}  # entry id -> (tenant, tokens)
        self._figures: dict[str, TenantFigures] = {}  # by label: as many as labels

    def _of(self, tenant: str) -> TenantFigures:
        return self._figures.setdefault(self.labels.label(tenant), TenantFigures())

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
        """Every label given out, with ``waiting`` (jobs in the window by tenant) and the
        jobs in flight filled in, summed over the tenants that share a label."""
        waiting_by, running_by = self._by_label(waiting), self._by_label(self.in_flight())
        for label in waiting_by:
            self._figures.setdefault(label, TenantFigures())
        return {
            label: figures.model_copy(
                update={"waiting": waiting_by[label], "in_flight": running_by[label]}
            )
            for label, figures in self._figures.items()
        }

    def _by_label(self, counts: Counter[str]) -> Counter[str]:
        by_label: Counter[str] = Counter()
        for tenant, count in counts.items():
            by_label[self.labels.label(tenant)] += count
        return by_label
