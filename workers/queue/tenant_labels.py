"""Which label a tenant is shown under, in a consumer's metrics and heartbeat (pure).

A job's ``tenant`` is any valid name its client picks (a raw ``XADD``, or the producer
with API keys off), and each label value is a series of its own in every consumer process
and in Prometheus, and an entry of the heartbeat's ``tenants`` map. So labels are capped:
the default tenant and the tenants named in ``LORAQ_TENANT_WEIGHTS`` always have their
own; of the others, the first ``LORAQ_TENANT_LABELS_MAX`` distinct ones a process sees
get theirs, and every later one is counted under :data:`OVERFLOW_TENANT_LABEL`. A tenant
keeps the label it was given for the life of the process, so a series never changes
meaning; the memory is that of the capped set.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.tenants import OVERFLOW_TENANT_LABEL, tenant_label

DEFAULT_LABELS_MAX = 100


class TenantLabels:
    """The labels one process hands out: ``named`` (the weighted tenants) always their
    own, then the first ``max_labels`` other tenants, then the overflow label."""

    def __init__(self, named: Iterable[str] = (), max_labels: int = DEFAULT_LABELS_MAX) -> None:
        self.max_labels = max_labels
        self._named = frozenset(named)
        self._given: set[str] = set()  # tenants past ``named`` with a label of their own

    def label(self, tenant: str | None) -> str:
        """``tenant``'s label (``None`` or "": the default tenant's)."""
        if not tenant or tenant in self._named or tenant in self._given:
            return tenant_label(tenant)
        if len(self._given) < self.max_labels:
            self._given.add(tenant)
            return tenant
        return OVERFLOW_TENANT_LABEL
