"""The adapters of the requests a model replica holds, from admission to their end.

What the replica publishes as ``adapters_in_flight`` (its heartbeat, its routing stats),
and the high-water mark of distinct adapters that shows whether the consumers kept
the slot rule: with the slot lease it never exceeds the replica's device slots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class AdaptersInFlight:
    """Requests per adapter held now, and the most distinct adapters ever held at once."""

    def __init__(self) -> None:
        self._requests: Counter[str] = Counter()
        self.max_distinct = 0

    @contextmanager
    def hold(self, adapter: str | None) -> Iterator[Callable[[], None]]:
        """Count a request of ``adapter`` (``None``: the base model, no slot) until the
        context exits, or earlier when the callable it yields is called (its row ended)."""
        released = adapter is None

        def release() -> None:
            nonlocal released
            if released or adapter is None:
                return
            released = True
            self._requests[adapter] -= 1
            if self._requests[adapter] <= 0:
                del self._requests[adapter]

        if adapter is not None:
            self._requests[adapter] += 1
            self.max_distinct = max(self.max_distinct, len(self._requests))
        try:
            yield release
        finally:
            release()

    def names(self) -> list[str]:
        """The adapters of the requests held now."""
        return sorted(self._requests)
