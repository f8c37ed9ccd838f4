"""Which disk-cache entries make room for a new one: least recently used, by bytes.

Pure: the disk cache lists its entries (size, last use, whether a process holds it) and
deletes what this returns. An entry in use is never chosen; if the ones that are free do
not make room, the cache runs over its budget until they are released.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DiskEntry:
    """One entry of the node's disk cache as it stands."""

    key: str
    size_bytes: int
    last_used: float  # seconds since the epoch
    in_use: bool


def victims(
    entries: Sequence[DiskEntry], *, incoming_bytes: int, budget_bytes: int
) -> list[tuple[str, int]]:
    """Keys (and sizes) to delete, oldest use first, so that ``incoming_bytes`` more fit
    the budget."""
    used = sum(entry.size_bytes for entry in entries)
    chosen = []
    for entry in sorted(entries, key=lambda item: item.last_used):
        if used + incoming_bytes <= budget_bytes:
            break
        if entry.in_use:
            continue
        chosen.append((entry.key, entry.size_bytes))
        used -= entry.size_bytes
    return chosen
