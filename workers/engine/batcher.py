"""Which waiting rows join the decode batch next (pure policy over a row source).

When the engine is idle, the first request opens a window of ``batch_wait_ms``: what
arrives in it, up to ``max_batch_size`` rows, is prefilled together whatever the
adapters. While a batch is decoding, rows that are already waiting join between steps
without any wait, up to the free room.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# next_row(timeout_s) -> a row, or None when none came within the timeout (0: don't
# wait; None: wait until one comes or the source closes).
NextRow = Callable[[float | None], "T | None"]


class Batcher(Generic[T]):
    """Forms groups of rows to admit; knows nothing of models or adapters."""

    def __init__(
        self,
        *,
        max_batch_size: int,
        batch_wait_ms: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self._clock = clock

    def collect(self, next_row: NextRow[T], *, running: int) -> list[T]:
        """Rows to admit next, given ``running`` rows in the batch now.

        Blocks for the first row only when nothing is running.
        """
        room = self.max_batch_size - running
        rows: list[T] = []
        if room <= 0:
            return rows
        if running == 0:
            first = next_row(None)
            if first is None:
                return rows
            rows.append(first)
            deadline = self._clock() + self.batch_wait_s
            while len(rows) < room and (left := deadline - self._clock()) > 0:
                row = next_row(left)
                if row is None:
                    break
                rows.append(row)
        while len(rows) < room and (row := next_row(0)) is not None:
            rows.append(row)
        return rows
