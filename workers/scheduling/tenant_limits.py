"""Per-tenant limits at scheduling: jobs in flight, and a token-bucket rate (pure).

The enqueue script refuses a producer's job over its tenant's rate; a job pushed past it
some other way (a raw ``XADD``, a producer without the setting, a batch's lines) is held
back here instead: it stays in the window, and starts once its tenant has a token and
room in flight. Each consumer enforces its share of the limits (the limit over the number
of consumers), since each runs its own part of the stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TenantLimits:
    """What each tenant may use at one consumer (0: no limit)."""

    max_in_flight: int = 0
    rate_per_s: float = 0.0
    burst: int = 0  # 0: one second's worth, at least 1

    @classmethod
    def share(
        cls, max_in_flight: int, rate_per_s: float, burst: int, consumers: int
    ) -> TenantLimits:
        """One consumer's share of the cluster-wide limits."""
        consumers = max(1, consumers)
        bucket = burst or max(1, math.ceil(rate_per_s))
        return cls(
            max_in_flight=math.ceil(max_in_flight / consumers) if max_in_flight else 0,
            rate_per_s=rate_per_s / consumers,
            burst=max(1, math.ceil(bucket / consumers)) if rate_per_s else 0,
        )

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return self.max_in_flight > 0 or self.rate_per_s > 0


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` held; starts full."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def tokens(self, now: float) -> float:
        """Tokens held at ``now`` (refilled since the last look)."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = max(self._at, now)
        return self._tokens

    def take(self, now: float) -> None:
        """Spend a token (a job started)."""
        self._tokens = self.tokens(now) - 1

    def ready_in_s(self, now: float) -> float:
        """Seconds until a whole token is there (0: now)."""
        return max(0.0, (1 - self.tokens(now)) / self.rate_per_s)


# Buckets a gate holds before it drops the full ones (a full bucket is the same as none:
# a new one starts full), so that the tenants a client makes up do not pile up.
PRUNE_BUCKETS_AT = 1024


class TenantGate:
    """How many jobs of each tenant may start now, under :class:`TenantLimits`."""

    def __init__(self, limits: TenantLimits, prune_at: int = PRUNE_BUCKETS_AT) -> None:
        self.limits = limits
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_min = self._prune_at = prune_at

    def _bucket(self, tenant: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst, now)
            self._buckets[tenant] = bucket
        return bucket

    def allowances(
        self, tenants: Iterable[str], in_flight: Mapping[str, int], now: float
    ) -> dict[str, int]:
        """Jobs each of ``tenants`` may start now; empty when no limit is set."""
        if not self.limits.any:
            return {}
        allowed = {}
        for tenant in tenants:
            room = math.inf
            if self.limits.max_in_flight:
                room = self.limits.max_in_flight - in_flight.get(tenant, 0)
            if self.limits.rate_per_s:
                room = min(room, math.floor(self._bucket(tenant, now).tokens(now)))
            allowed[tenant] = max(0, int(min(room, 1 << 30)))
        if len(self._buckets) > self._prune_at:
            self._drop_full(now)
        return allowed

    def _drop_full(self, now: float) -> None:
        """Drop the buckets that are full; next time at twice what is left."""
        self._buckets = {
            tenant: bucket
            for tenant, bucket in self._buckets.items()
            if bucket.tokens(now) < bucket.burst
        }
        self._prune_at = max(self._prune_min, 2 * len(self._buckets))

    @property
    def buckets(self) -> int:
        """Tenants whose bucket the gate holds."""
        return len(self._buckets)

    def started(self, tenant: str, now: float) -> None:
        """A job of ``tenant`` started: it spends a token."""
        if self.limits.rate_per_s:
            self._bucket(tenant, now).take(now)

    def ready_in_s(self, held: Iterable[str], now: float) -> float | None:
        """Seconds until one of the ``held`` tenants has a token again (``None``: no rate,
        or nothing held; room in flight comes back when a job ends, which wakes the
        consumer anyway)."""
        if not self.limits.rate_per_s:
            return None
        waits = [self._bucket(tenant, now).ready_in_s(now) for tenant in held]
        return min((wait for wait in waits if wait > 0), default=None)
