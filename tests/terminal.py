"""A stderr for tests that says it is a terminal (the CLI draws progress only on one)."""

from __future__ import annotations

import io


class Terminal(io.StringIO):
    """Keeps what was written to it, and answers ``isatty()`` with True."""

    def isatty(self) -> bool:
        return True
