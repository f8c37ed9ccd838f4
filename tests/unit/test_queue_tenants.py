"""A consumer's window with tenants (pure: no Redis): fair starts, charges settled at the
end, and the per-tenant figures its heartbeat shows."""

from __future__ import annotations

from collections import Counter

from schemas import Job
from workers.queue.claimed import ClaimedWindow
from workers.queue.policy import Claim
from workers.queue.store import Entry
from workers.queue.tenants import TenantBook
from workers.scheduling.tenant_limits import TenantLimits, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def window_of(
    jobs: list[tuple[str, str | None]],
    weights: dict[str, float],
    limits: TenantLimits | None = None,
    clock: Clock | None = None,
    horizon: int | None = None,
) -> ClaimedWindow:
    window = ClaimedWindow(
        capacity=100,
        max_passover_s=1e6,
        slots=2,
        tenants=TenantBook(weights, limits),
        horizon=horizon,
        clock=clock or Clock(),
    )
    for entry_id, tenant in jobs:
        job = Job(prompt="x", tenant=tenant, params={"max_new_tokens": 10})  # type: ignore[arg-type]
        window.add(Entry(entry_id, {}), Claim.of(job, entry_id))
    return window


def test_a_backlog_of_one_tenant_does_not_hold_back_another() -> None:
    jobs = [(f"a{i}", "a") for i in range(20)] + [("b0", "b"), ("b1", "b")]
    window = window_of(jobs, {})
    taken = window.take({}, free=4, max_jobs=100)
    # No replica known: Serve places them; still in fair order: a, b, a, b.
    assert [w.entry.entry_id for w, _ in taken] == ["a0", "b0", "a1", "b1"]


def test_weights_shape_the_starts_and_ends_settle_the_charge() -> None:
    jobs = [(f"a{i}", "a") for i in range(20)] + [(f"n{i}", None) for i in range(20)]
    window = window_of(jobs, {"a": 3.0})
    taken = window.take({}, free=8, max_jobs=100)
    assert Counter(w.claim.tenant for w, _ in taken) == {"a": 6, None: 2}
    for waiting, _ in taken:
        window.started(waiting)
    book = window.tenants
    assert book.shares.counter("a") == 20.0 and book.shares.counter("") == 20.0
    for waiting, _ in taken:
        book.ended(waiting.entry.entry_id, 4)  # each stopped after 4 of its 10 tokens
    assert book.shares.counter("a") == 8.0 and book.shares.counter("") == 8.0
    figures = book.figures(window.waiting_by_tenant())
    assert figures["a"].started == 6 and figures["a"].tokens == 24
    assert figures["a"].waiting == 14 and figures["a"].in_flight == 0
    assert figures["(default)"].waiting == 18


def test_a_tenant_at_its_limit_in_flight_waits_and_the_others_go() -> None:
    jobs = [(f"a{i}", "a") for i in range(10)] + [(f"b{i}", "b") for i in range(10)]
    window = window_of(jobs, {}, TenantLimits(max_in_flight=2))
    first = window.take({}, free=8, max_jobs=100)
    for waiting, _ in first:
        window.started(waiting)
    assert Counter(w.claim.tenant for w, _ in first) == {"a": 2, "b": 2}
    assert window.take({}, free=8, max_jobs=100) == []  # both at their limit
    window.tenants.ended(first[0][0].entry.entry_id, 10)
    again = window.take({}, free=8, max_jobs=100)
    assert [w.claim.tenant for w, _ in again] == [first[0][0].claim.tenant]
    assert len(window) == 20 - 5  # held back, not dropped


def test_a_tenant_over_its_rate_is_held_back_until_its_bucket_refills() -> None:
    clock = Clock()
    jobs = [(f"a{i}", "a") for i in range(10)]
    window = window_of(jobs, {}, TenantLimits(rate_per_s=2.0, burst=3), clock)
    first = window.take({}, free=8, max_jobs=100)
    for waiting, _ in first:
        window.started(waiting)
    assert len(first) == 3  # the burst
    assert window.take({}, free=8, max_jobs=100) == []
    assert window.next_overdue_s == 0.5  # a token every half second: plan again then
    clock.now += 0.5
    assert len(window.take({}, free=8, max_jobs=100)) == 1


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(4.0, 2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.ready_in_s(0.0) == 0.25
    assert bucket.tokens(10.0) == 2


def test_one_consumers_share_of_the_limits() -> None:
    share = TenantLimits.share(max_in_flight=5, rate_per_s=3.0, burst=0, consumers=2)
    assert share == TenantLimits(max_in_flight=3, rate_per_s=1.5, burst=2)
    assert not TenantLimits.share(0, 0.0, 0, 3).any


def test_a_plan_sees_each_tenants_first_jobs_however_deep_the_window() -> None:
    jobs = [(f"a{i}", "a") for i in range(50)] + [("b0", "b")]
    window = window_of(jobs, {}, horizon=4)
    assert [job.key for job in window._candidates()] == ["a0", "a1", "a2", "a3", "b0"]
    taken = window.take({}, free=2, max_jobs=100)
    assert [w.entry.entry_id for w, _ in taken] == ["a0", "b0"]
    assert window.waiting_by_tenant() == {"a": 49}
    assert window.entry_ids()[:2] == ["a1", "a2"] and len(window) == 49
