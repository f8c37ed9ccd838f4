"""Rows of a mixed-adapter pass grouped by device slot, for the stacked LoRA path (pure logic).

Gathering each row's own A and B (``[rows, in, r]``, ``[rows, r, out]``) reads one copy of
an adapter's matrices per *row*: at 64 rows of 8 adapters, eight copies of each where one
would do, and for a one-token step those reads cost more than the products. Grouped, the
rows of one slot sit together in ``[groups, size, ...]`` blocks (a group with fewer rows
than the largest is padded with a repeat of some row, whose output is never read), so
each adapter is read once per pass and the two products stay two ``bmm`` calls. Each
row is its own group (the per-row gather again) when padding would more than double the
rows computed (one big group among many singletons), when the groups are more than
``MAX_GROUP_SHARE`` of the rows, or when grouping saves fewer than ``MIN_SAVED_READS``
adapter reads. A grouped read costs more than a per-row one (``bmm`` over blocks of
several rows, and two gathers), so grouping pays only where it reads well under the rows'
count of adapters. The thresholds come from ``bench/cpu_kernels.py`` with the stacks read
from memory, as in a decode step (figures in docs/SERVING.md, "Where our CPU step goes"):
with the stacks in cache a read is nearly free and only the gathers' cost shows, which
had set an earlier threshold far too high.

Shapes: ``R`` rows, ``G`` groups, ``M`` rows per group (padded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_PADDING = 2.0  # at most G x M <= MAX_PADDING x R rows computed
MAX_GROUP_SHARE = 0.6  # group only when G <= MAX_GROUP_SHARE x R
MIN_SAVED_READS = 4  # and R - G >= this


@dataclass(frozen=True)
class RowGroups:
    """Where each row of a pass goes in the grouped blocks, and back."""

    slots: list[int]  # [G] the slot of each group
    size: int  # M: rows per group, padding included
    gather: list[int]  # [G * M] the row at each block position (padding repeats a row)
    scatter: list[int]  # [R] the block position of each row


def rows_by_slot(row_slots: Sequence[int]) -> dict[int, list[int]]:
    """Each slot's rows, slots in order of first use."""
    members: dict[int, list[int]] = {}
    for row, slot in enumerate(row_slots):
        members.setdefault(slot, []).append(row)
    return members


def group_rows(
    row_slots: Sequence[int],
    *,
    max_padding: float = MAX_PADDING,
    max_group_share: float = MAX_GROUP_SHARE,
    min_saved_reads: int = MIN_SAVED_READS,
) -> RowGroups:
    """Group rows by their slot (``row_slots[i]`` is row ``i``'s), in order of first use."""
    members = rows_by_slot(row_slots)
    slots, groups = list(members), list(members.values())
    size = max((len(rows) for rows in groups), default=0)
    total = len(row_slots)
    count = len(groups)
    if (
        count * size > max_padding * total
        or count > max_group_share * total
        or total - count < min_saved_reads
    ):
        slots, groups, size = list(row_slots), [[row] for row in range(total)], 1
    gather: list[int] = []
    scatter = [0] * total
    for rows in groups:
        for row in rows:
            scatter[row] = len(gather)
            gather.append(row)
        gather.extend([rows[0]] * (size - len(rows)))
    return RowGroups(slots=slots, size=size, gather=gather, scatter=scatter)


@dataclass(frozen=True)
class SlotRuns:
    """A pass's rows in runs of one slot each, for the CPU kernel (no padding: it loops
    over each run's rows itself); rows of ``skip`` (the base slot) are left out."""

    order: list[int]  # the rows, run after run
    starts: list[int]  # [runs + 1] where each run starts in ``order``, then its end
    slots: list[int]  # [runs] the slot of each run


def slot_runs(row_slots: Sequence[int], skip: int) -> SlotRuns:
    """Rows grouped by slot (``row_slots[i]`` is row ``i``'s), in order of first use."""
    members = rows_by_slot(row_slots)
    members.pop(skip, None)
    order: list[int] = []
    starts = [0]
    for rows in members.values():
        order.extend(rows)
        starts.append(len(order))
    return SlotRuns(order=order, starts=starts, slots=list(members))
