"""The adapter cache policy: LRU over a fixed number of slots, pinned adapters stay."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.adapters.cache import AdapterCachePolicy, LoadPlan, SlotState


def load(policy: AdapterCachePolicy, name: str) -> LoadPlan:
    """Plan and complete a load, then drop the planner's pin (as a finished request would)."""
    plan = policy.plan_load(name)
    assert plan is not None
    policy.loaded(name)
    policy.unpin(name)
    return plan


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdapterCachePolicy(0)


def test_loads_fill_free_slots_without_evicting() -> None:
    policy = AdapterCachePolicy(2)
    assert load(policy, "a").evict == ()
    assert load(policy, "b").evict == ()
    assert policy.loaded_names() == ["a", "b"]
    assert policy.counters.loads == 2 and policy.counters.evictions == 0


def test_the_least_recently_used_unpinned_adapter_is_evicted() -> None:
    policy = AdapterCachePolicy(2)
    load(policy, "a")
    load(policy, "b")
    assert policy.hit("a")  # a is now the most recently used
    policy.unpin("a")
    assert load(policy, "c").evict == ("b",)
    assert policy.loaded_names() == ["a", "c"]
    assert policy.state("b") is None
    assert policy.counters.evictions == 1


def test_a_pinned_adapter_is_never_evicted() -> None:
    policy = AdapterCachePolicy(2)
    load(policy, "a")
    load(policy, "b")
    assert policy.hit("a")  # a request in flight uses a
    assert policy.hit("b")
    policy.unpin("b")
    plan = policy.plan_load("c")
    assert plan is not None and plan.evict == ("b",)
    assert policy.state("a") is SlotState.LOADED


def test_no_plan_while_every_slot_is_pinned_then_one_after_an_unpin() -> None:
    policy = AdapterCachePolicy(1)
    load(policy, "a")
    assert policy.hit("a")
    assert policy.plan_load("b") is None
    assert policy.state("a") is SlotState.LOADED and policy.state("b") is None
    policy.unpin("a")
    plan = policy.plan_load("b")
    assert plan == LoadPlan(name="b", evict=("a",))


def test_a_loading_adapter_holds_its_slot_and_is_not_a_hit() -> None:
    policy = AdapterCachePolicy(1)
    assert policy.plan_load("a") is not None
    assert policy.state("a") is SlotState.LOADING
    assert not policy.hit("a")
    # The only slot is taken by a load in flight: nothing to evict.
    assert policy.plan_load("b") is None
    policy.loaded("a")
    assert policy.hit("a") and policy.counters.hits == 1


def test_a_failed_load_frees_its_slot_and_every_pin() -> None:
    policy = AdapterCachePolicy(1)
    assert policy.plan_load("a") is not None
    policy.pin("a")  # a second request joined the load
    policy.load_failed("a")
    assert policy.state("a") is None and policy.pin_count("a") == 0
    assert policy.counters.load_failures == 1
    assert policy.plan_load("b") is not None


def test_misuse_is_refused() -> None:
    policy = AdapterCachePolicy(2)
    with pytest.raises(KeyError):
        policy.pin("ghost")
    with pytest.raises(KeyError):
        policy.unpin("ghost")
    with pytest.raises(KeyError):
        policy.loaded("ghost")
    load(policy, "a")
    with pytest.raises(ValueError):
        policy.plan_load("a")


OPS = st.lists(
    st.tuples(st.sampled_from(["acquire", "release", "finish"]), st.sampled_from("abcdef")),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 4), ops=OPS)
def test_invariants_hold_for_any_sequence(capacity: int, ops: list[tuple[str, str]]) -> None:
    """Slots never exceed capacity; a pinned adapter is never evicted."""
    policy = AdapterCachePolicy(capacity)
    held: dict[str, int] = {}  # pins the simulated requests hold
    for op, name in ops:
        if op == "acquire":
            if policy.hit(name):
                held[name] = held.get(name, 0) + 1
            elif policy.state(name) is None:
                plan = policy.plan_load(name)
                if plan is not None:
                    assert not set(plan.evict) & {n for n, c in held.items() if c}
                    held[name] = held.get(name, 0) + 1
        elif op == "finish" and policy.state(name) is SlotState.LOADING:
            policy.loaded(name)
        elif op == "release" and held.get(name):
            held[name] -= 1
            policy.unpin(name)
        slots = [n for n in "abcdef" if policy.state(n) is not None]
        assert len(slots) <= capacity
        for pinned, count in held.items():
            assert policy.pin_count(pinned) == count
            if count:
                assert policy.state(pinned) is not None
