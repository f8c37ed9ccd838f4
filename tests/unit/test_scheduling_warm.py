"""The consumer's picture of the replicas' device adapters (pure)."""

from __future__ import annotations

from workers.scheduling.warm import WarmSets


def test_sends_are_kept_in_lru_order_within_the_slots() -> None:
    warm = WarmSets(slots=2)
    for name, at in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        warm.sent("r0", name, at)
    assert warm.warm("r0") == ("b", "c")


def test_a_beat_replaces_the_picture_and_replays_later_sends() -> None:
    warm = WarmSets(slots=3)
    warm.sent("r0", "a", 1.0)
    warm.sent("r0", "b", 5.0)
    # The beat at 3.0 saw "a" (sent before it) but not "b".
    warm.beat("r0", ["x", "a"], ts=3.0)
    assert warm.warm("r0") == ("x", "a", "b")
    # An older beat arriving late changes nothing.
    warm.beat("r0", ["y"], ts=2.0)
    assert warm.warm("r0") == ("x", "a", "b")


def test_replicas_that_are_gone_are_forgotten() -> None:
    warm = WarmSets(slots=2)
    warm.beat("r0", ["a"], ts=1.0)
    warm.beat("r1", ["b"], ts=1.0)
    warm.keep_only(["r1"])
    assert warm.replicas() == ["r1"]
    assert warm.warm("r0") == ()
