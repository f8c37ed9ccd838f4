"""Coalescing of generated text into stream chunks: a few per second, not one per token."""

from __future__ import annotations


class ChunkBuffer:
    """Collects text deltas and hands out a chunk at most every ``interval_s`` seconds,
    or earlier once it holds ``max_chars`` characters.

    Each chunk costs a Ray message and a Redis entry, so per-token chunks would cost more
    than the tokens; a subscriber still sees text within ``interval_s``.
    """

    def __init__(self, *, interval_s: float, max_chars: int, now: float) -> None:
        self.interval_s = interval_s
        self.max_chars = max_chars
        self._parts: list[str] = []
        self._size = 0
        self._last_flush = now

    def add(self, text: str, now: float) -> str | None:
        """Add ``text``; returns a chunk when one is due."""
        if text:
            self._parts.append(text)
            self._size += len(text)
        if self._size and (
            self._size >= self.max_chars or now - self._last_flush >= self.interval_s
        ):
            self._last_flush = now
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Whatever is held, as one chunk (``None`` when empty)."""
        if not self._size:
            return None
        chunk = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        return chunk
