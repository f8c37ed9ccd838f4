"""Stop strings and streaming of a row's text (pure string logic).

A row's text is handed out as it grows, but never a piece that could still turn out to
be the start of a stop string, nor a trailing replacement character of a half-decoded
multi-byte sequence: what has been handed out is always a prefix of the final text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

REPLACEMENT = "\ufffd"


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` must wait for more text."""
    held = len(text) - len(text.rstrip(REPLACEMENT))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                held = max(held, size)
                break
    return held


@dataclass
class TextTracker:
    """Follows a row's decoded text: finds stop strings, says what may be handed out."""

    stops: Sequence[str] = ()
    text: str = ""
    emitted: int = 0
    stopped: bool = field(default=False)

    def update(self, text: str) -> str:
        """Take the row's full text so far; return the new text that may be handed out.

        After a stop string appears, :attr:`text` ends just before it and
        :attr:`stopped` is true.
        """
        found = [index for stop in self.stops if (index := text.find(stop, self.emitted)) >= 0]
        if found:
            self.text = text[: min(found)]
            self.stopped = True
            return self._emit(len(self.text))
        self.text = text
        return self._emit(len(text) - _held_back(text, self.stops))

    def flush(self) -> str:
        """The row has ended: hand out whatever was held back."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return delta
