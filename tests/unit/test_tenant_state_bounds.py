"""A consumer's per-tenant state stays bounded however many tenants a client makes up:
fair-share counters of idle tenants are forgotten past a bound, full rate buckets dropped."""

from __future__ import annotations

from workers.scheduling.fairness import TenantShares
from workers.scheduling.tenant_limits import TenantGate, TenantLimits


def test_idle_tenants_counters_are_forgotten_past_the_bound() -> None:
    shares = TenantShares(max_idle=8)
    for i in range(1000):
        shares.waiting([f"t{i}", "steady"])
        shares.charge(f"t{i}", 10)
        shares.charge("steady", 10)
    assert len(shares.snapshot()) <= 8 + 2
    assert "steady" in shares.snapshot()  # a waiting tenant is never forgotten


def test_the_idle_tenants_forgotten_are_those_with_the_lowest_counters() -> None:
    shares = TenantShares(max_idle=4)
    shares.waiting([f"t{i}" for i in range(6)])
    for i in range(6):
        shares.charge(f"t{i}", 10 * i)
    shares.waiting(["t0"])  # t1..t5 idle: one past the bound; down to 2 idle
    assert set(shares.snapshot()) == {"t0", "t4", "t5"}
    # One forgotten comes back at the clock, as a new tenant would.
    shares.waiting(["t0", "t1"])
    assert shares.counter("t1") == shares.counter("t0")


def test_below_the_bound_nothing_is_forgotten() -> None:
    shares = TenantShares(max_idle=8)
    for i in range(8):
        shares.waiting([f"t{i}"])
        shares.charge(f"t{i}", 1)
    shares.waiting([])
    assert len(shares.snapshot()) == 8


def test_full_buckets_are_dropped_and_held_back_ones_kept() -> None:
    gate = TenantGate(TenantLimits(rate_per_s=1.0, burst=1), prune_at=16)
    now = 0.0
    gate.started("busy", now)  # its bucket is empty for a second
    for i in range(1000):
        gate.allowances([f"t{i}"], {}, now)
    assert gate.buckets <= 32
    assert gate.allowances(["busy"], {}, now) == {"busy": 0}
    assert gate.allowances(["busy"], {}, now + 1.0) == {"busy": 1}
