"""Per-slice batch counts: which slices a read refreshes, and what they add up to."""

from __future__ import annotations

from workers.gateway.batch_counts import SliceCount, add_up, slices_to_read


def test_a_read_takes_unfinished_slices_in_turn_from_where_the_last_stopped() -> None:
    done, left = SliceCount(5, 0, 0), SliceCount(1, 1, 3)
    known = {0: left, 1: done, 2: left}
    assert slices_to_read(known, 6, start=2, most=3) == [2, 3, 4]
    assert slices_to_read(known, 6, start=5, most=3) == [5, 0, 2]  # wraps, skips the done one
    assert slices_to_read({0: done}, 1, start=0) == []
    assert slices_to_read({}, 0, start=0) == []


def test_counts_add_up_and_the_batch_is_over_only_when_every_slice_is() -> None:
    done, left = SliceCount(4, 1, 0), SliceCount(2, 0, 3)
    counts, over = add_up({0: done, 1: left}, 2, total=10)
    assert (counts.total, counts.completed, counts.failed, over) == (10, 6, 1, False)
    assert add_up({0: done}, 2, total=10)[1] is False  # slice 1 never read
    assert add_up({0: done, 1: done}, 2, total=10)[1] is True
    assert SliceCount.load(left.dump()) == left
