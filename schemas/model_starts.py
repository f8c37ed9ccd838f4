"""Failed starts of the model replicas, as ``{P}:model:starts`` holds them (v1.4).

A replica whose start raises counts one failure there, with its cause in one line; a
replica that starts sets the count back to 0. Operators' tools read it (``loraq top``,
the gateway's ``/readyz``), and ``loraq serve`` stops the application once the count
reaches ``LORAQ_MAX_START_FAILURES``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from schemas.codec import as_text

# How much of an exception's message the record keeps: one line an operator reads.
MAX_CAUSE_CHARS = 500


class StartFailures(BaseModel):
    """The model replicas' failed starts since one last started, and the latest cause."""

    failures: int = 0
    cause: str = ""
    replica: str = ""
    ts: float = 0.0

    @classmethod
    def from_hash(cls, fields: Mapping[bytes | str, bytes | str]) -> StartFailures | None:
        """The record of an ``HGETALL`` reply; ``None`` for an empty one (no key)."""
        if not fields:
            return None
        values = {as_text(name): as_text(value) for name, value in fields.items()}
        return cls.model_validate(values)

    def summary(self) -> str:
        """``3 failed starts, last on <replica>: <cause>`` (empty with no failure)."""
        if self.failures <= 0:
            return ""
        plural = "s" if self.failures != 1 else ""
        return f"{self.failures} failed start{plural}, last on {self.replica}: {self.cause}"


def cause_of(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message, clipped."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return line if len(line) <= MAX_CAUSE_CHARS else line[: MAX_CAUSE_CHARS - 1] + "…"
