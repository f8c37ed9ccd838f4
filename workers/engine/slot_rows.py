"""The rows of a decode batch in the slots of a :class:`SlotCache`, with their per-row tensors.

Row ``s`` of every per-row tensor is slot ``s``; a pass runs slots ``0..R-1`` where ``R``
is one past the highest slot in use, so holes left by finished rows run too (their
outputs are ignored) until a joining row takes one. Per step the host does O(1) work
besides the pass: every live row writes one column further, so the longest row's column
is ``max_base + steps`` (``base`` = a row's column at step 0), recomputed only when rows
join or leave. Shapes: ``N`` slots, ``R`` rows in the pass, ``n`` rows joining.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch
from transformers import DynamicCache

from workers.engine.kv_slots import SlotCache
from workers.engine.sampling import SamplingPlan

# A row as the decode loop keeps it; slots only hold it (no attribute of it is read here).
RowT = TypeVar("RowT")

# (input ids [R, 1], attention mask [R, kv], position ids [R, 1], cache) -> logits [R, V]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, SlotCache], torch.Tensor]


class SlotRows(Generic[RowT]):
    """Rows in cache slots; only the model thread uses it."""

    def __init__(self, cache: SlotCache, device: torch.device) -> None:
        self.cache = cache
        slots = cache.slots

        def zeros() -> torch.Tensor:
            return torch.zeros(slots, dtype=torch.long, device=device)

        self.rows: list[RowT | None] = []  # by slot, up to the highest slot in use
        self.plan: SamplingPlan | None = None  # of ``rows`` (holes greedy), built on change
        self._columns = zeros()  # [N] the column each row writes next
        self._positions = zeros()  # [N] the position of the token each row feeds next
        self._last_tokens = zeros()  # [N] the token each row feeds next
        self._live = zeros()  # [N] 1 for a row, 0 for a free slot
        self._slot_index = torch.arange(slots, device=device)  # [N]
        self._device = device
        self._steps = 0
        self._base: dict[int, int] = {}  # slot -> its row's column at step 0
        self._max_base = 0

    def join(
        self,
        rows: Sequence[RowT],
        prefill: DynamicCache,
        mask: torch.Tensor,
        next_positions: torch.Tensor,
        first_tokens: torch.Tensor,
    ) -> list[int]:
        """Put prefilled ``rows`` (cache and mask ``[n, width]``) into free slots; their
        next positions and tokens are ``[n]``. Returns their slots."""
        slots = self._take(len(rows))
        index = torch.tensor(slots, device=self._device)  # [n]
        width = mask.shape[1]
        self.cache.join(index, prefill, mask)
        self._columns[index] = width
        self._positions[index] = next_positions
        self._last_tokens[index] = first_tokens
        self._live[index] = 1
        for slot, row in zip(slots, rows, strict=True):
            self.rows[slot] = row
            self._base[slot] = width - self._steps
        self._changed()
        return slots

    def leave(self, slots: Sequence[int]) -> None:
        """Free ``slots``; no other slot's cache moves."""
        index = torch.tensor(list(slots), device=self._device)
        self._live[index] = 0
        self._columns[index] = 0  # a hole writes column 0 of its own slot, harmlessly
        self._positions[index] = 0
        for slot in slots:
            self.rows[slot] = None
            del self._base[slot]
        while self.rows and self.rows[-1] is None:
            self.rows.pop()
        self._changed()

    def run(self, forward: Forward) -> torch.Tensor:
        """One decode pass over slots ``0..R-1``; logits ``[R, V]``."""
        count = len(self.rows)
        kv_length = self._max_base + self._steps + 1
        self.cache.begin_pass(self._slot_index[:count], self._columns[:count], kv_length)
        logits = forward(
            self._last_tokens[:count, None],
            self.cache.pass_mask(),
            self._positions[:count, None],
            self.cache,
        )
        live = self._live[:count]
        self._columns[:count] += live
        self._positions[:count] += live
        self._steps += 1
        return logits

    def set_tokens(self, tokens: torch.Tensor) -> None:
        """The tokens the pass's rows (``[R]``) feed next."""
        self._last_tokens[: len(tokens)] = tokens

    def _take(self, count: int) -> list[int]:
        """The ``count`` lowest free slots (holes first), growing ``rows`` as needed."""
        free = [slot for slot, row in enumerate(self.rows) if row is None]
        while len(free) < count:
            if len(self.rows) >= self.cache.slots:
                raise RuntimeError("more rows than cache slots")
            self.rows.append(None)
            free.append(len(self.rows) - 1)
        return free[:count]

    def _changed(self) -> None:
        self.plan = None
        self._max_base = max(self._base.values(), default=0)
        if not self._base:
            self._steps = 0
