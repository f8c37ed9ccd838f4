"""The scheduling policy (pure): capacity, slots, aging, priorities, FIFO, placement."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.scheduling.planner import (
    Dispatch,
    Limits,
    Plan,
    ReplicaView,
    WindowJob,
    plan,
)

PASSOVER_S = 5.0
NOW = 100.0
ADAPTERS = [None, "a", "b", "c", "d", "e", "f"]


def job(key: str, adapter: str | None, *, priority: int = 0, waited: float = 0.0) -> WindowJob:
    return WindowJob(key, adapter, priority, NOW - waited)


def replica(
    rid: str,
    warm: tuple[str, ...] = (),
    running: dict[str | None, int] | None = None,
    slots: int = 2,
) -> ReplicaView:
    return ReplicaView(rid, slots, warm, running or {})


def limits(free: int = 100, max_jobs: int = 100) -> Limits:
    return Limits(free=free, max_jobs=max_jobs, max_passover_s=PASSOVER_S)


def placed(result: Plan) -> dict[str, str | None]:
    return {d.key: d.replica for d in result.dispatch}


# Hypothesis inputs: a window over a few adapters, replicas whose running jobs already
# respect their slots, and bounds.
windows = st.lists(
    st.tuples(st.sampled_from(ADAPTERS), st.integers(-2, 2), st.floats(0, 2 * PASSOVER_S)),
    max_size=30,
).map(
    lambda items: [
        job(f"j{i}", adapter, priority=prio, waited=waited)
        for i, (adapter, prio, waited) in enumerate(items)
    ]
)


@st.composite
def replica_sets(draw: st.DrawFn) -> list[ReplicaView]:
    views = []
    for index in range(draw(st.integers(1, 3))):
        slots = draw(st.integers(1, 3))
        active = draw(st.lists(st.sampled_from(ADAPTERS[1:]), unique=True, max_size=slots))
        running: dict[str | None, int] = {name: draw(st.integers(1, 3)) for name in active}
        running[None] = draw(st.integers(0, 2))
        idle = draw(st.lists(st.sampled_from(ADAPTERS[1:]), unique=True, max_size=slots))
        warm = tuple(dict.fromkeys([*idle, *active]))[-slots:]
        views.append(ReplicaView(f"r{index}", slots, warm, running))
    return views


bounds = st.builds(
    Limits, free=st.integers(0, 20), max_jobs=st.integers(1, 8), max_passover_s=st.just(PASSOVER_S)
)


def after(views: list[ReplicaView], window: list[WindowJob], result: Plan) -> dict[str, Counter]:
    adapters = {j.key: j.adapter for j in window}
    running = {v.id: Counter(v.running) for v in views}
    for d in result.dispatch:
        assert d.replica is not None
        running[d.replica][adapters[d.key]] += 1
    return running


@settings(max_examples=300, deadline=None)
@given(windows, replica_sets(), bounds)
def test_capacity_and_device_slots_are_never_exceeded(
    window: list[WindowJob], views: list[ReplicaView], bound: Limits
) -> None:
    result = plan(window, views, bound, now=NOW)
    keys = [d.key for d in result.dispatch]
    assert len(keys) == len(set(keys)) <= bound.free
    assert set(keys) <= {j.key for j in window}
    slots = {v.id: v.slots for v in views}
    before = {v.id: sum(v.running.values()) for v in views}
    for rid, running in after(views, window, result).items():
        active = {name for name, n in running.items() if name is not None and n > 0}
        assert len(active) <= slots[rid], (rid, running)
        assert sum(running.values()) <= max(bound.max_jobs, before[rid])


@settings(max_examples=300, deadline=None)
@given(windows, replica_sets(), bounds)
def test_no_waiting_job_takes_what_an_overdue_job_needs(
    window: list[WindowJob], views: list[ReplicaView], bound: Limits
) -> None:
    # Aging: which overdue jobs start does not depend on the jobs that are not overdue,
    # so no job passes an overdue one over (it goes first to every replica it can use).
    overdue = [j for j in window if NOW - j.arrived >= PASSOVER_S]
    full = plan(window, views, bound, now=NOW)
    alone = plan(overdue, views, bound, now=NOW)
    assert [d for d in full.dispatch if d.key in {j.key for j in overdue}] == list(alone.dispatch)


@settings(max_examples=300, deadline=None)
@given(windows, replica_sets(), bounds, st.integers(-2, 2))
def test_lower_priorities_never_take_what_higher_ones_need(
    window: list[WindowJob], views: list[ReplicaView], bound: Limits, floor: int
) -> None:
    def keeps(j: WindowJob) -> bool:
        return NOW - j.arrived >= PASSOVER_S or j.priority >= floor

    full = plan(window, views, bound, now=NOW)
    kept = [j for j in window if keeps(j)]
    only = plan(kept, views, bound, now=NOW)
    kept_keys = {j.key for j in kept}
    assert [d for d in full.dispatch if d.key in kept_keys] == list(only.dispatch)


@settings(max_examples=300, deadline=None)
@given(windows, replica_sets(), bounds)
def test_fifo_among_jobs_of_one_adapter_and_priority(
    window: list[WindowJob], views: list[ReplicaView], bound: Limits
) -> None:
    started = set(placed(plan(window, views, bound, now=NOW)))
    fresh = [j for j in window if NOW - j.arrived < PASSOVER_S]
    for i, earlier in enumerate(fresh):
        for later in fresh[i + 1 :]:
            same = (earlier.adapter, earlier.priority) == (later.adapter, later.priority)
            if same and later.key in started:
                assert earlier.key in started, (earlier, later)


def test_equal_jobs_start_in_window_order_up_to_the_free_count() -> None:
    window = [job(f"j{i}", None) for i in range(10)]
    result = plan(window, [replica("r0"), replica("r1")], limits(free=4), now=NOW)
    assert [d.key for d in result.dispatch] == ["j0", "j1", "j2", "j3"]


def test_higher_priority_first_then_warm_then_fifo() -> None:
    window = [
        job("cold", "x"),
        job("warm", "a"),
        job("urgent-cold", "y", priority=5),
        job("base", None),
    ]
    result = plan(window, [replica("r0", warm=("a",), slots=4)], limits(free=3), now=NOW)
    assert [d.key for d in result.dispatch] == ["urgent-cold", "warm", "base"]


def test_jobs_go_where_their_adapter_is_warm_and_group_there() -> None:
    views = [replica("r0", warm=("a",)), replica("r1", warm=("b",))]
    window = [job("1", "b"), job("2", "a"), job("3", "b"), job("4", "a")]
    assert placed(plan(window, views, limits(), now=NOW)) == {
        "1": "r1",
        "2": "r0",
        "3": "r1",
        "4": "r0",
    }


def test_a_cold_adapter_groups_onto_the_one_replica_that_loads_it() -> None:
    views = [replica("r0"), replica("r1")]
    window = [job(str(i), "new") for i in range(4)]
    homes = set(placed(plan(window, views, limits(max_jobs=10), now=NOW)).values())
    assert len(homes) == 1


def test_no_replica_runs_more_distinct_adapters_than_slots() -> None:
    views = [replica("r0", slots=2)]
    window = [job("1", "a"), job("2", "b"), job("3", "c"), job("4", "a")]
    assert placed(plan(window, views, limits(), now=NOW)) == {"1": "r0", "2": "r0", "4": "r0"}


def test_a_hot_adapter_spreads_to_another_replica_when_its_own_is_full() -> None:
    views = [replica("r0", warm=("hot",)), replica("r1")]
    window = [job(str(i), "hot") for i in range(6)]
    result = plan(window, views, limits(max_jobs=3), now=NOW)
    assert Counter(placed(result).values()) == {"r0": 3, "r1": 3}


def test_an_overdue_cold_job_drains_the_adapter_that_frees_a_slot_soonest() -> None:
    views = [replica("r0", running={"a": 3, "b": 1}, slots=2)]
    window = [job("old", "z", waited=PASSOVER_S + 1), job("more-b", "b"), job("more-a", "a")]
    first = plan(window, views, limits(), now=NOW)
    # "b" has the fewest jobs running: it gets no new ones until "z" has its slot.
    assert placed(first) == {"more-a": "r0"}
    assert [(d.replica, d.adapter) for d in first.draining.values()] == [("r0", "b")]
    # Next plan, "b" has drained: its slot goes to the overdue job first.
    drained = [replica("r0", running={"a": 4}, slots=2)]
    second = plan(window[:2], drained, limits(), now=NOW, draining=first.draining)
    assert placed(second) == {"old": "r0"}
    assert not second.draining


def test_a_drain_is_kept_from_plan_to_plan_until_its_job_starts() -> None:
    views = [replica("r0", running={"a": 1, "b": 1}, slots=2)]
    window = [job("old", "z", waited=PASSOVER_S + 1)]
    first = plan(window, views, limits(), now=NOW)
    # Another plan where "a" would be the cheaper victim keeps the first choice.
    (victim,) = first.draining.values()
    other = "a" if victim.adapter == "b" else "b"
    views = [replica("r0", running={victim.adapter: 2, other: 1}, slots=2)]
    second = plan(window, views, limits(), now=NOW, draining=first.draining)
    assert second.draining == first.draining


def test_one_drain_serves_every_overdue_job_of_its_adapter() -> None:
    views = [replica("r0", running={"a": 3, "b": 1}, slots=2)]
    window = [job(f"old-{i}", "z", waited=PASSOVER_S + 1 + i) for i in range(3)]
    window.append(job("old-y", "y", waited=PASSOVER_S + 1))
    result = plan(window, views, limits(), now=NOW)
    # "z" drains "b" (fewest running); "y", another adapter, drains "a".
    assert sorted((d.adapter, key) for key, d in result.draining.items()) == [
        ("a", "old-y"),
        ("b", "old-2"),
    ]


def test_cold_adapters_of_waiting_jobs_are_hinted_to_their_home_replica() -> None:
    views = [replica("r0", running={"a": 1, "b": 1}), replica("r1", running={"c": 1, "d": 1})]
    window = [job("1", "x"), job("2", "y"), job("3", "a")]
    result = plan(window, views, limits(), now=NOW)
    assert placed(result) == {"3": "r0"}
    hinted = sorted(name for names in result.prefetch.values() for name in names)
    assert hinted == ["x", "y"]


def test_without_replicas_jobs_start_fifo_and_serve_places_them() -> None:
    window = [job("1", "a"), job("2", None), job("3", "b")]
    result = plan(window, [], limits(free=2), now=NOW)
    assert result.dispatch == (Dispatch("1", None), Dispatch("2", None))


def test_the_fifo_policy_starts_jobs_in_claim_order_whatever_their_priority_or_warmth() -> None:
    window = [job("1", "cold"), job("2", "a", priority=5, waited=9.0), job("3", None)]
    views = [replica("r0", warm=("a",))]
    result = plan(window, views, limits(free=2), now=NOW, fifo=True)
    assert result == Plan((Dispatch("1", None), Dispatch("2", None)), {}, {}, None)
    assert plan(window, views, limits(free=0), now=NOW, fifo=True).dispatch == ()


def test_the_next_overdue_time_is_when_the_oldest_waiting_job_reaches_the_bound() -> None:
    window = [job("1", "z", waited=1.0), job("2", "z", waited=3.0)]
    result = plan(window, [replica("r0", running={"a": 1, "b": 1})], limits(), now=NOW)
    assert result.next_overdue_s == PASSOVER_S - 3.0


def test_a_rare_adapter_waits_at_most_the_bound_plus_one_job_under_hot_traffic() -> None:
    # Two hot adapters keep both slots of the one replica busy with a new job each tick;
    # a rare adapter's job must still start within the bound plus one job's run time.
    duration, tick = 1.0, 0.1
    runs: list[tuple[float, str | None]] = []  # (end, adapter)
    window: list[WindowJob] = []
    draining: dict = {}
    started_rare_at = None
    now = 0.0
    window.append(WindowJob("rare", "rare", 0, 0.0))
    for step in range(200):
        now = step * tick
        runs = [(end, a) for end, a in runs if end > now]
        window += [WindowJob(f"h{step}-{a}", a, 0, now) for a in ("hot1", "hot2")]
        running = Counter(a for _, a in runs)
        view = ReplicaView("r0", 2, ("hot1", "hot2"), running)
        result = plan(window, [view], limits(max_jobs=30), now=now, draining=draining)
        draining = dict(result.draining)
        adapters = {j.key: j.adapter for j in window}
        for d in result.dispatch:
            runs.append((now + duration, adapters[d.key]))
            if d.key == "rare":
                started_rare_at = now
        window = [j for j in window if j.key not in placed(result)]
        if started_rare_at is not None:
            break
    assert started_rare_at is not None
    # Passed over while fresh (both slots busy), then started once overdue.
    assert PASSOVER_S <= started_rare_at <= PASSOVER_S + duration + tick
