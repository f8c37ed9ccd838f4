"""A batch's request counts kept per slice of its lines, so that one read does bounded work.

Pure: no Redis. A batch's lines are cut into slices of ``READ_CHUNK`` lines; each slice's
counts (completed, failed, not ended) are stored once read. A job's final status is
written once, so a slice with no job left never changes and is never read again; each
read refreshes at most ``most`` of the unfinished slices, taking turns from where the
last read stopped, and adds up the stored counts of all of them. The counts shown lag
the jobs by at most a few reads and only grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas.batches import RequestCounts

# Slices a read refreshes (each one ``READ_CHUNK`` lines: two round trips, a few ms).
SLICES_PER_READ = 4


@dataclass(frozen=True)
class SliceCount:
    """What one slice's lines came to when last read."""

    completed: int
    failed: int
    pending: int

    def dump(self) -> str:
        """The stored form: three numbers."""
        return f"{self.completed} {self.failed} {self.pending}"

    @classmethod
    def load(cls, text: str) -> SliceCount:
        """The inverse of :meth:`dump`."""
        completed, failed, pending = (int(part) for part in text.split())
        return cls(completed, failed, pending)


def slices_to_read(
    known: Mapping[int, SliceCount], slices: int, *, start: int, most: int = SLICES_PER_READ
) -> list[int]:
    """Up to ``most`` slices not known to be over (never read, or with jobs left), the
    first at ``start`` or after it, wrapping round: a slice stuck on a long job does not
    keep the others from being read."""
    order = [(start + step) % slices for step in range(slices)] if slices else []
    unfinished = [index for index in order if index not in known or known[index].pending]
    return unfinished[:most]


def add_up(known: Mapping[int, SliceCount], slices: int, total: int) -> tuple[RequestCounts, bool]:
    """The batch's counts, and whether every job has ended (each slice read and none
    with a job left)."""
    counts = RequestCounts(total=total)
    for count in known.values():
        counts.completed += count.completed
        counts.failed += count.failed
    over = len(known) >= slices and not any(count.pending for count in known.values())
    return counts, over
