"""Fair shares between tenants (pure): the counters, the order, and the planner with
several consumers' windows sharing the same replicas."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Job
from schemas.replicas import ReplicaHeartbeat
from workers.queue.claimed import ClaimedWindow
from workers.queue.policy import Claim
from workers.queue.store import Entry
from workers.scheduling.fairness import TenantShares, fair_order, parse_weights
from workers.scheduling.planner import Limits, ReplicaView, WindowJob, plan

WINDOW_TOKENS = 1000  # the window of generated tokens
MAX_JOB_TOKENS = 64


def test_weights_parse_and_refuse_what_is_not_a_positive_weight() -> None:
    assert parse_weights(" a=2, b=1 ,,c=0.5") == {"a": 2.0, "b": 1.0, "c": 0.5}
    assert parse_weights("") == {}
    for bad in ("a", "a=0", "a=-1", "=2", "a=x", "a=inf", "a=nan"):
        with pytest.raises(ValueError, match="tenant=weight"):
            parse_weights(bad)


def test_fair_order_interleaves_by_weight_and_keeps_each_tenants_order() -> None:
    shares = TenantShares({"a": 2.0})
    jobs = [("a", i) for i in range(6)] + [("b", i) for i in range(3)]
    order = fair_order(jobs, shares, tenant=lambda j: j[0], tokens=lambda j: 10)
    assert [t for t, _ in order] == ["a", "b", "a", "a", "b", "a", "a", "b", "a"]
    assert [i for t, i in order if t == "a"] == list(range(6))


def test_a_tenant_back_from_idle_shares_instead_of_catching_up() -> None:
    shares = TenantShares()
    shares.waiting({"a"})
    shares.charge("a", 10_000)  # a alone: it takes everything
    shares.waiting({"a", "b"})  # b arrives: lifted to a's counter, not left at 0
    assert shares.counter("b") == shares.counter("a")
    shares.waiting({"b"})
    shares.charge("b", 500)
    shares.waiting({"a", "b"})  # a comes back: no lower than b, already waiting
    assert shares.counter("a") == shares.counter("b")


def test_settling_gives_back_what_a_job_did_not_generate() -> None:
    shares = TenantShares({"a": 2.0})
    shares.charge("a", 64)
    shares.settle("a", charged=64, used=10)
    assert shares.counter("a") == pytest.approx(5.0)


def test_without_tenants_the_order_is_the_planners_own() -> None:
    window = [WindowJob(f"j{i}", None, 0, 0.0) for i in range(5)]
    result = plan(window, [ReplicaView("r", 2, (), {})], Limits(5, 5, 5.0), now=1.0)
    assert [d.key for d in result.dispatch] == [f"j{i}" for i in range(5)]


@dataclass
class Planner:
    """One consumer: its window (claimed from the shared stream), its counters, its log."""

    capacity: int
    max_in_flight: int
    shares: TenantShares
    window: list[WindowJob] = field(default_factory=list)
    running: int = 0
    # (tenant, tokens, tenants with a job waiting here just before it went)
    log: list[tuple[str, int, frozenset[str]]] = field(default_factory=list)


@st.composite
def fleets(
    draw: st.DrawFn,
) -> tuple[dict[str, float], list[tuple[str, int]], int, int, int, float]:
    names = [f"t{i}" for i in range(draw(st.integers(2, 4)))]
    weights = {name: float(draw(st.integers(1, 4))) for name in names}
    # Backlogs in stream order: runs of one tenant's jobs, as a tenant submits in bulk.
    runs = draw(
        st.lists(
            st.tuples(st.sampled_from(names), st.integers(1, 40), st.integers(1, MAX_JOB_TOKENS)),
            min_size=2,
            max_size=12,
        )
    )
    stream = [(tenant, tokens) for tenant, count, tokens in runs for _ in range(count)]
    planners = draw(st.integers(1, 3))
    replicas = draw(st.integers(1, 3))
    max_jobs = draw(st.integers(1, 4))
    # In steps; jobs wait far longer than 3 steps in a backlog: aging is in play.
    passover = draw(st.sampled_from([3.0, 1e9]))
    return weights, stream, planners, replicas, max_jobs, passover


def simulate(
    weights: dict[str, float],
    stream: list[tuple[str, int]],
    planners: int,
    replicas: int,
    jobs: int,
    passover: float = 1e9,
) -> list[Planner]:
    """Consumers claim from one stream in turns and plan onto shared replicas; a job runs
    for a time that grows with its tokens. Base-model jobs: slots never bind here (the
    slot rule is the placement's, tested on its own)."""
    fleet = [Planner(32, 4, TenantShares(weights)) for _ in range(planners)]
    running: dict[str, Counter[str | None]] = {f"r{i}": Counter() for i in range(replicas)}
    ends: list[tuple[int, str, Planner]] = []  # (step, replica, planner)
    todo, step, serial = list(reversed(stream)), 0, 0
    while todo or any(p.window for p in fleet) or ends:
        for rid_end in [e for e in ends if e[0] <= step]:
            ends.remove(rid_end)
            running[rid_end[1]][None] -= 1
            rid_end[2].running -= 1
        for planner in fleet:
            while todo and len(planner.window) < planner.capacity:
                tenant, tokens = todo.pop()
                job = WindowJob(f"j{serial}", None, 0, float(step), tenant, tokens)
                planner.window.append(job)
                serial += 1
            planner.shares.waiting({job.tenant for job in planner.window})
            views = [ReplicaView(rid, 2, (), +counts) for rid, counts in running.items()]
            free = planner.max_in_flight - planner.running
            result = plan(
                planner.window,
                views,
                Limits(free, jobs, passover),
                now=float(step),
                shares=planner.shares,
            )
            by_key = {job.key: job for job in planner.window}
            for dispatch in result.dispatch:
                job = by_key[dispatch.key]
                planner.log.append(
                    (job.tenant, job.tokens, frozenset(j.tenant for j in planner.window))
                )
                planner.window.remove(job)
                planner.shares.charge(job.tenant, job.tokens)
                if all(other.tenant != job.tenant for other in planner.window):
                    planner.shares.idle(job.tenant)  # its last waiting job started
                assert dispatch.replica is not None
                running[dispatch.replica][None] += 1
                planner.running += 1
                ends.append((step + 1 + job.tokens // 16, dispatch.replica, planner))
        step += 1
        assert step < 100_000
    return fleet


# The tokens a waiting tenant's share of a window may fall short by: one job's and a half.
# Not one job's: with three or more tenants no order holds that in every fleet (with
# weights 6, 4 and 1 and jobs of one size none keeps each lag in a band a job wide; see
# workers/scheduling/fairness.py); and with two tenants, within one job by fair_order
# alone, the idle lift adds to it here: a tenant whose jobs are claimed one at a time
# behind another's backlog is idle between a start and the next claim (waiting before
# every start all the same), and lifted, giving up what it was owed. The worst
# Hypothesis found through this simulation: 1.34 jobs (two tenants in the window, 4:1);
# fair_order alone, with 3 or 4 tenants always waiting: 1.42.
SLACK_TOKENS = MAX_JOB_TOKENS * 3 / 2


def shortfalls(log: list[tuple[str, int, frozenset[str]]], weights: dict[str, float]) -> list[str]:
    """Each window of at least WINDOW_TOKENS dispatched tokens in which a tenant had a
    job waiting before every dispatch, yet got less than its weighted share (among the
    tenants waiting in it) minus :data:`SLACK_TOKENS`."""
    found = []
    for start in range(len(log)):
        total, got, present, always = 0, Counter[str](), set[str](), set(log[start][2])
        for tenant, tokens, waiting in log[start:]:
            total += tokens
            got[tenant] += tokens
            present |= waiting
            always &= waiting
            if total >= WINDOW_TOKENS:
                break
        if total < WINDOW_TOKENS:
            break
        share_of = sum(weights[t] for t in present)
        for tenant in always:
            share = weights[tenant] / share_of
            owed = share * total - SLACK_TOKENS
            if got[tenant] < owed:
                found.append(f"from {start}: {tenant} got {got[tenant]} of {total}, owed {owed}")
    return found


@settings(max_examples=60, deadline=None)
@given(fleets())
def test_no_waiting_tenant_falls_below_its_weighted_share(
    fleet_spec: tuple[dict[str, float], list[tuple[str, int]], int, int, int, float],
) -> None:
    """Each consumer gives every tenant waiting in its window at least its weighted share
    of each 1,000 tokens it starts, less one job's tokens and a half (:data:`SLACK_TOKENS`),
    while several consumers share the replicas (so each gets what capacity the others
    leave), with the aging bound in play or not (overdue jobs compete beside other
    tenants' by share); every job starts."""
    weights, stream, planners, replicas, max_jobs, passover = fleet_spec
    fleet = simulate(weights, stream, planners, replicas, max_jobs, passover)
    assert sum(len(p.log) for p in fleet) == len(stream)
    for planner in fleet:
        assert shortfalls(planner.log, weights) == []


def test_a_tenant_alone_takes_every_free_slot() -> None:
    """Work-conserving: with one tenant waiting, every slot is used however far ahead of
    its share that tenant is."""
    shares = TenantShares({"a": 1.0, "b": 100.0})
    shares.charge("a", 1_000_000)
    window = [WindowJob(f"j{i}", None, 0, 0.0, "a", 64) for i in range(8)]
    shares.waiting({"a"})
    result = plan(window, [ReplicaView("r", 2, (), {})], Limits(8, 8, 5.0), now=1.0, shares=shares)
    assert len(result.dispatch) == 8


def test_a_tenant_whose_last_job_started_is_lifted_when_it_comes_back() -> None:
    """Idle is noted job by job: b's only job started, a took the rest of the plan; when
    b's next jobs come, b does not catch up on what a took meanwhile."""
    shares = TenantShares()
    shares.waiting({"a", "b"})
    shares.charge("b", 64)
    shares.idle("b")
    for _ in range(3):
        shares.charge("a", 64)
    shares.waiting({"a", "b"})
    assert shares.counter("b") == shares.counter("a") == 192


def test_the_tenant_most_owed_after_its_next_job_goes_first() -> None:
    """a (weight 1, 64-token jobs) and b, c (weight 2, 8-token jobs), all even: b and c
    each take their share of a's job before a goes again, not one job each."""
    shares = TenantShares({"b": 2.0, "c": 2.0})
    shares.waiting({"a", "b", "c"})
    jobs = [("a", 64)] * 3 + [("b", 8)] * 20 + [("c", 8)] * 20
    order = fair_order(jobs, shares, tenant=lambda j: j[0], tokens=lambda j: j[1])
    given = Counter[str]()
    for owner, tokens in order[:30]:
        given[owner] += tokens
    total = sum(given.values())
    for owner, weight in (("a", 1), ("b", 2), ("c", 2)):
        assert given[owner] >= weight / 5 * total - 64


def headroom_plan(
    window: list[WindowJob], in_flight: dict[str, int], free: int, *, replicas: bool
) -> list[str]:
    views = [ReplicaView("r0", 2, (), {None: sum(in_flight.values())})] if replicas else []
    limits = Limits(free, sum(in_flight.values()) + free, 5.0, headroom=1)
    result = plan(window, views, limits, now=0.0, shares=TenantShares(), in_flight=in_flight)
    return [next(j.tenant for j in window if j.key == d.key) for d in result.dispatch]


@pytest.mark.parametrize("replicas", [False, True])
def test_headroom_is_left_by_a_tenant_alone_and_taken_by_one_under_its_share(
    replicas: bool,
) -> None:
    a_jobs = [WindowJob(f"a{i}", None, 0, 0.0, "a", 16) for i in range(10)]
    b_job = WindowJob("b0", None, 0, 1.0, "b", 16)
    # a alone: all but the headroom.
    assert headroom_plan(a_jobs, {}, 4, replicas=replicas) == ["a", "a", "a"]
    assert headroom_plan(a_jobs, {"a": 7}, 1, replicas=replicas) == []
    # b comes: under its share (0 of 4 places), it takes the last place a left.
    assert headroom_plan([*a_jobs, b_job], {"a": 7}, 1, replicas=replicas) == ["b"]
    # b over its share (5 of 8 places, its share 4) leaves it to a, under its share.
    assert headroom_plan([*a_jobs, b_job], {"a": 2, "b": 5}, 1, replicas=replicas) == ["a"]
    assert headroom_plan([b_job], {"a": 2, "b": 5}, 1, replicas=replicas) == []


def test_a_window_does_not_plan_again_while_nothing_changed() -> None:
    """One tenant alone with only the headroom free: the plan starts nothing, and the next
    take() spares the plan until a job comes, a place frees or the replicas change."""
    window = ClaimedWindow(capacity=100, max_passover_s=1e6, slots=2, headroom=1)
    for index in range(3):
        window.add(Entry(f"a{index}", {}), Claim.of(Job(prompt="x", tenant="a"), f"a{index}"))
    window.see([ReplicaHeartbeat(replica="r0", adapters=[], slots=2, ts=0.0, interval_s=1)])
    for index in range(7):  # a's jobs this consumer runs
        window.tenants.started(f"run{index}", "a", 16, 0.0, 0.0)
    assert window.take({"r0": Counter({None: 7})}, free=1, max_jobs=8) == []
    planned = window.stats.planned
    assert window.take({"r0": Counter({None: 7})}, free=1, max_jobs=8) == []
    assert window.stats.planned == planned  # nothing changed: no plan
    window.add(Entry("b0", {}), Claim.of(Job(prompt="x", tenant="b"), "b0"))
    taken = window.take({"r0": Counter({None: 7})}, free=1, max_jobs=8)
    assert [w.entry.entry_id for w, _ in taken] == ["b0"]  # under its share: the headroom
    assert window.take({"r0": Counter({None: 6})}, free=2, max_jobs=8) != []  # a place freed
