"""The batcher: which waiting rows are admitted together (driven by a fake clock)."""

from __future__ import annotations

from collections import deque

import pytest

from workers.engine.batcher import Batcher


class Arrivals:
    """Rows arriving at given times; the clock moves only while the batcher waits."""

    def __init__(self, arrivals: list[tuple[float, str]]) -> None:
        self.now = 0.0
        self.pending = deque(sorted(arrivals))
        self.waits: list[float | None] = []

    def clock(self) -> float:
        return self.now

    def next_row(self, timeout_s: float | None) -> str | None:
        self.waits.append(timeout_s)
        if self.pending and (timeout_s is None or self.pending[0][0] <= self.now + timeout_s):
            at, row = self.pending.popleft()
            self.now = max(self.now, at)
            return row
        if timeout_s:
            self.now += timeout_s
        return None


def batcher(source: Arrivals, size: int = 4, wait_ms: float = 10) -> Batcher[str]:
    return Batcher(max_batch_size=size, batch_wait_ms=wait_ms, clock=source.clock)


def test_rows_within_the_wait_window_form_one_batch() -> None:
    source = Arrivals([(0.0, "a"), (0.004, "b"), (0.009, "c"), (0.020, "late")])
    assert batcher(source).collect(source.next_row, running=0) == ["a", "b", "c"]
    assert source.waits[0] is None  # idle: block for the first row


def test_the_batch_closes_as_soon_as_it_is_full() -> None:
    source = Arrivals([(0.0, r) for r in "abcdef"])
    assert batcher(source, size=4).collect(source.next_row, running=0) == list("abcd")
    assert source.now == 0.0


def test_while_running_only_ready_rows_join_up_to_the_room() -> None:
    source = Arrivals([(0.0, "a"), (0.0, "b"), (0.0, "c"), (5.0, "later")])
    assert batcher(source, size=4).collect(source.next_row, running=2) == ["a", "b"]
    assert all(wait == 0 for wait in source.waits)


def test_a_full_batch_takes_nothing() -> None:
    source = Arrivals([(0.0, "a")])
    assert batcher(source, size=2).collect(source.next_row, running=2) == []
    assert source.waits == []


def test_a_closed_source_gives_an_empty_batch() -> None:
    source = Arrivals([])
    assert batcher(source).collect(lambda _timeout: None, running=0) == []


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Batcher(max_batch_size=0, batch_wait_ms=1)
