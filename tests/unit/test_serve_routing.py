"""The adapter-affinity ranking of LoRAModel replicas (pure policy)."""

from __future__ import annotations

from workers.engine.requests import GenerationRequest
from workers.scheduling.rendezvous import rendezvous_score
from workers.serve.routing import (
    UnseenTargets,
    adapters_of,
    affinity_ranks,
    next_for_replica,
    target_of,
    targeted,
)

REPLICAS = {"r1": {"upper", "reverse"}, "r2": {"rot13"}, "r3": {"upper", "title"}}


def test_replicas_holding_the_adapter_come_first_and_only_they() -> None:
    ranks = affinity_ranks("upper", REPLICAS)
    assert sorted(ranks[0]) == ["r1", "r3"]
    assert ranks[1:] == [["r2"]]


def test_a_cold_adapter_goes_to_the_replica_with_fewest_adapters_then_the_rest() -> None:
    assert affinity_ranks("sql", REPLICAS)[0] == ["r2"]
    assert sorted(affinity_ranks("sql", REPLICAS)[1]) == ["r1", "r3"]


def test_ties_between_cold_replicas_are_broken_the_same_way_everywhere() -> None:
    even = {f"r{i}": {"a", "b"} for i in range(8)}
    homes = {affinity_ranks(name, even)[0][0] for name in ("x",) * 20}
    assert len(homes) == 1  # every router, every time, picks one home for "x"
    spread = {affinity_ranks(f"adapter-{i}", even)[0][0] for i in range(200)}
    assert len(spread) == 8  # different adapters get different homes
    assert rendezvous_score("x", "r1") == rendezvous_score("x", "r1")


def test_base_model_requests_go_to_two_random_replicas_then_all() -> None:
    first, everyone = affinity_ranks("", REPLICAS)
    assert len(first) == 2 and set(first) <= set(REPLICAS)
    assert sorted(everyone) == sorted(REPLICAS)
    assert affinity_ranks("", {}) == []
    assert affinity_ranks("upper", {}) == []


def test_a_single_replica_is_every_rank_there_is() -> None:
    assert affinity_ranks("upper", {"only": set()}) == [["only"]]
    assert affinity_ranks("", {"only": set()}) == [["only"], ["only"]]


def test_a_placed_request_goes_to_its_target_first_then_the_usual_ranks() -> None:

    ranks = affinity_ranks("upper", REPLICAS)
    # "upper" ranks r1/r3 first, then r2 (cold): placed on r2, it goes there first.
    assert targeted(ranks, "r2") == [["r2"], ranks[0]]
    assert targeted(ranks, "r2", pinned=True) == [["r2"]]  # a cancel goes nowhere else
    assert targeted(ranks, None) == ranks
    assert targeted(ranks, "gone") == ranks


def test_a_target_the_router_has_not_seen_yet_is_waited_for_a_while_a_gone_one_not() -> None:
    unseen = UnseenTargets(wait_s=30)
    # r3 wrote its first heartbeat (so a consumer placed a job there) before this router
    # heard of it: the request waits rather than run on r1 or r2 outside the slot lease.
    assert unseen.should_wait("r3", ["r1", "r2"], now=100.0)
    assert unseen.should_wait("r3", ["r1", "r2"], now=129.0)
    assert not unseen.should_wait("r3", ["r1", "r2", "r3"], now=129.5)
    # Seen once and gone since (it died): the usual ranks at once.
    assert not unseen.should_wait("r3", ["r1", "r2"], now=130.0)
    assert not unseen.should_wait(None, [], now=130.0)
    # Never heard of for the whole wait (it died while starting): the ranks take over.
    assert unseen.should_wait("r9", ["r1"], now=200.0)
    assert not unseen.should_wait("r9", ["r1"], now=230.0)


def test_the_target_is_read_from_a_keyword_or_the_request_object() -> None:
    assert target_of([], {"target_replica": "r1"}) == "r1"
    assert target_of([GenerationRequest("a", "x", target_replica="r2")], {}) == "r2"
    assert target_of([GenerationRequest("a", "x")], {}) is None
    assert target_of([["upper"]], {}) is None


def test_a_replicas_adapters_come_from_its_routing_stats() -> None:
    # What LoRAModel.record_routing_stats publishes; none yet (a new replica): nothing.
    assert adapters_of({"adapters": ["a", "b", "a"]}) == {"a", "b"}
    assert adapters_of(None) == frozenset() and adapters_of({}) == frozenset()
    held = {"r0": adapters_of({"adapters": ["a"]}), "r1": adapters_of(None)}
    assert affinity_ranks("a", held)[0] == ["r0"]


class FakeWaiting:
    """A waiting request as next_for_replica reads it (pure logic: no Serve here)."""

    def __init__(self, target: str | None, method: str = "generate", done: bool = False) -> None:
        self._target, self._method, self._done = target, method, done

    def done(self) -> bool:
        return self._done

    def target(self) -> str | None:
        return self._target

    def method(self) -> str:
        return self._method


def test_a_found_replica_serves_the_oldest_request_of_its_adapter_that_may_run_there() -> None:
    own = FakeWaiting("r1")
    older_elsewhere = FakeWaiting("r2")  # placed on r2 by the slot lease: never r1
    older_cancel = FakeWaiting(None, method="cancel")  # another call: never
    older_done = FakeWaiting(None, done=True)
    older_free = FakeWaiting(None)  # placed nowhere: may run on r1
    queue = [older_done, older_elsewhere, older_cancel, older_free, own]
    assert next_for_replica(own, queue, "r1") is older_free
    assert next_for_replica(own, [older_elsewhere, own], "r1") is own
    # No request of the same adapter waits (or the base model): the one it was found for.
    assert next_for_replica(own, [], "r1") is own
    # The request it was found for is gone (cancelled or served): nobody.
    assert next_for_replica(None, queue, "r1") is None
    assert next_for_replica(FakeWaiting("r1", done=True), queue, "r1") is None
