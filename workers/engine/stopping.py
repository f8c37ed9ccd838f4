"""Stop strings and streaming of a row's text (pure string logic).

A row's text arrives piece by piece (from :mod:`detokenize`) and is handed out as it
grows, but never a piece that could still turn out to be the start of a stop string: what
has been handed out is always a prefix of the final text. Only the text not handed out
yet (shorter than the longest stop string) and the new piece are searched, so a step costs
O(new text + stop strings), whatever the row's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` may be the start of a stop string."""
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                held = max(held, size)
                break
    return held


@dataclass
class TextTracker:
    """Follows a row's text: finds stop strings, says what may be handed out."""

    stops: Sequence[str] = ()
    stopped: bool = False
    _emitted: list[str] = field(default_factory=list)  # the pieces handed out, in order
    _pending: str = ""  # text not handed out yet: it may start a stop string

    @property
    def text(self) -> str:
        """The row's text so far; after a stop string, the text before it."""
        return "".join(self._emitted) + self._pending

    def update(self, piece: str) -> str:
        """Take the row's new text; return the new text that may be handed out.

        After a stop string appears, :attr:`text` ends just before it and :attr:`stopped`
        is true; later pieces are ignored.
        """
        if self.stopped or not piece:
            return ""
        # A stop string starts inside the pending text or the piece: the text handed out
        # never holds a stop string's start that could still complete.
        window = self._pending + piece
        found = [index for stop in self.stops if (index := window.find(stop)) >= 0]
        if found:
            self._pending = window[: min(found)]
            self.stopped = True
            return self._emit(len(self._pending))
        self._pending = window
        return self._emit(len(window) - _held_back(window, self.stops))

    def flush(self) -> str:
        """The row has ended: hand out whatever was held back."""
        return self._emit(len(self._pending))

    def _emit(self, upto: int) -> str:
        delta, self._pending = self._pending[:upto], self._pending[upto:]
        if delta:
            self._emitted.append(delta)
        return delta
