"""Coalescing of generated text into stream chunks: every few tokens, not one per token."""

from __future__ import annotations


class ChunkBuffer:
    """Collects text deltas (about one per decode step) and hands out a chunk once it holds
    ``min_deltas`` of them and ``interval_s`` has passed since the last chunk, or at once
    when it holds ``max_chars`` characters.

    Each chunk costs a Ray message and a Redis entry, so per-token chunks would cost more
    than the tokens, and more so when decode steps are slow; a subscriber still sees the
    text grow every few tokens.
    """

    def __init__(self, *, interval_s: float, min_deltas: int, max_chars: int, now: float) -> None:
        self.interval_s = interval_s
        self.min_deltas = min_deltas
        self.max_chars = max_chars
        self._parts: list[str] = []
        self._size = 0
        self._last_flush = now

    def add(self, text: str, now: float) -> str | None:
        """Add ``text``; returns a chunk when one is due."""
        if text:
            self._parts.append(text)
            self._size += len(text)
        due = len(self._parts) >= self.min_deltas and now - self._last_flush >= self.interval_s
        if self._size and (due or self._size >= self.max_chars):
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
