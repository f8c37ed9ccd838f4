"""The host tier's policy: LRU by bytes, pins that hold, loads that fail, deferred drops."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.adapters.host_cache import HostCachePolicy

MB = 2**20


def loaded(policy: HostCachePolicy, name: str, size: int) -> tuple[str, ...]:
    """Load ``name`` as a caller would: reserve, then report its size, then unpin."""
    policy.start_load(name)
    evicted = policy.loaded(name, size)
    return evicted + policy.unpin(name)


def test_least_recently_used_goes_first_when_over_budget() -> None:
    policy = HostCachePolicy(3 * MB)
    for name in "abc":
        assert loaded(policy, name, MB) == ()
    assert policy.hit("a")
    policy.unpin("a")
    assert loaded(policy, "d", MB) == ("b",)
    assert policy.names() == ["c", "a", "d"]
    assert policy.bytes_used == 3 * MB
    assert policy.counters.evictions == 1 and policy.counters.hits == 1


def test_a_pinned_entry_stays_even_over_budget_until_unpinned() -> None:
    policy = HostCachePolicy(2 * MB)
    loaded(policy, "a", MB)
    assert policy.hit("a")  # in use
    policy.start_load("big")
    assert policy.loaded("big", 3 * MB) == ()  # both pinned: over budget for now
    assert policy.bytes_used == 4 * MB
    assert policy.unpin("a") == ("a",)  # the older goes first once free
    assert policy.unpin("big") == ("big",)  # alone over the budget: it cannot stay
    assert policy.bytes_used == 0


def test_concurrent_askers_share_a_load_and_a_failure_drops_every_pin() -> None:
    policy = HostCachePolicy(MB)
    policy.start_load("a")
    assert not policy.hit("a") and policy.is_loading("a")
    policy.pin("a")  # a second asker joins the load
    policy.load_failed("a")
    assert not policy.has("a") and policy.pin_count("a") == 0
    assert policy.counters.load_failures == 1
    with pytest.raises(ValueError):
        policy.start_load("b")
        policy.start_load("b")


def test_discard_waits_for_the_last_user() -> None:
    policy = HostCachePolicy(MB)
    loaded(policy, "a", 10)
    assert policy.hit("a")
    assert not policy.discard("a")
    policy.unpin("a")
    assert policy.discard("a") and not policy.has("a")
    assert not policy.discard("a")


# Operations: (verb, adapter index, size in bytes).
OPS = st.lists(
    st.tuples(
        st.sampled_from(["get", "release", "discard"]),
        st.integers(0, 7),
        st.integers(0, 400),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(0, 1000))
def test_pins_hold_and_the_budget_holds_whenever_unpinned_entries_suffice(
    ops: list[tuple[str, int, int]], budget: int
) -> None:
    policy = HostCachePolicy(budget)
    held: list[str] = []  # one item per pin a caller holds
    for verb, index, size in ops:
        name = f"a{index}"
        if verb == "get":
            if not policy.hit(name):
                if policy.has(name):
                    continue  # loads finish at once here: only loaded entries exist
                policy.start_load(name)
                evicted = policy.loaded(name, size)
                assert not set(evicted) & set(held), "evicted an entry in use"
            held.append(name)
        elif verb == "release" and name in held:
            held.remove(name)
            evicted = policy.unpin(name)
            assert not set(evicted) & set(held)
        elif verb == "discard":
            expected = policy.has(name) and name not in held
            assert policy.discard(name) is expected
        for name in set(held):
            assert policy.has(name) and policy.pin_count(name) == held.count(name)
        # Over the budget only while every entry left is in use.
        assert policy.bytes_used <= budget or all(n in held for n in policy.names())
