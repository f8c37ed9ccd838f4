"""A consumer's window against the slot lease (pure: no Redis): the plan counts every
consumer's jobs on a replica, a refused start waits again in its place, and a replica's
job cap is an even share of all consumers' bounds."""

from __future__ import annotations

from collections import Counter

from schemas import Job
from schemas.replicas import ReplicaHeartbeat
from workers.queue.claimed import ClaimedWindow, job_cap
from workers.queue.policy import Claim
from workers.queue.store import Entry


def window_of(adapters: list[str], *, fifo: bool = False) -> ClaimedWindow:
    times = iter(range(1000))
    window = ClaimedWindow(
        capacity=100, max_passover_s=1e6, slots=2, fifo=fifo, clock=lambda: next(times)
    )
    for index, adapter in enumerate(adapters):
        window.add(Entry(f"e{index}", {}), Claim.of(Job(prompt="x", adapter=adapter), f"e{index}"))
    window.see([ReplicaHeartbeat(replica="r0", adapters=["a"], slots=2, ts=0.0, interval_s=1)])
    return window


def test_other_consumers_jobs_take_the_replicas_slots() -> None:
    window = window_of(["a", "b", "c"])
    # Another consumer runs 'x' and 'y' on r0: both slots are taken, even the warm 'a'
    # (not in flight there) cannot start.
    assert window.take({"r0": Counter({"x": 1, "y": 1})}, free=8, max_jobs=10) == []
    # With one slot in use by another consumer, one more adapter fits: the warm one.
    taken = window.take({"r0": Counter({"x": 1})}, free=8, max_jobs=10)
    assert [(w.claim.adapter, replica) for w, replica in taken] == [("a", "r0")]


def test_a_refused_start_waits_again_in_its_place() -> None:
    window = window_of(["a", "a", "b"])
    taken = window.take({}, free=1, max_jobs=10)
    assert [w.entry.entry_id for w, _ in taken] == ["e0"]
    window.refused(taken[0][0])
    assert window.entry_ids() == ["e0", "e1", "e2"]
    assert window.stats.slot_refusals == 1


def test_fifo_claims_only_what_can_start_and_starts_it_in_claim_order_unplaced() -> None:
    window = window_of(["b", "a", "c"], fifo=True)
    assert window.room_for(free=5) == 2  # three claimed already: two more can start now
    assert window.room_for(free=2) == 0
    taken = window.take({}, free=2, max_jobs=10)
    assert [(w.entry.entry_id, replica) for w, replica in taken] == [("e0", None), ("e1", None)]
    assert window_of(["a"]).room_for(free=0) == 99  # the planner's window fills regardless


def test_a_replicas_job_cap_is_an_even_share_of_every_consumers_bound() -> None:
    assert job_cap(32, consumers=1, replicas=2, max_ongoing=64) == 16
    assert job_cap(32, consumers=3, replicas=2, max_ongoing=64) == 48
    assert job_cap(32, consumers=3, replicas=1, max_ongoing=64) == 64
    assert job_cap(1, consumers=1, replicas=4, max_ongoing=64) == 1
