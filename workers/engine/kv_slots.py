"""A preallocated KV cache with one slot per row: rows join and leave without copying others.

Each layer keeps ``keys``/``values`` buffers of ``[slots, heads, capacity, head_dim]``
allocated once (``capacity`` doubles, up to the longest row the settings allow, when a row
outgrows it: a copy O(log length) times over a batch's life, never per step). A row owns
one slot and writes its own columns: its prefill (left padding included) at columns
``0..width-1``, then one column per decode step at its own ``column``. A decode step
scatters each row's new key and value into its column (O(rows), whatever the length) and
hands attention views of the columns in use, ``[:rows, :, :kv_length]``: no ``torch.cat``
of keys, values or masks, and a row that joins or leaves touches only its own slot.

Slots in ``[0, rows)`` left by a row whose neighbours stay (holes) still run in the pass
(their outputs are ignored) until a joining row takes them: the lowest free slot goes
first, so holes fill before the pass grows. Shapes: ``R`` rows in the pass (live rows and
holes), ``H`` heads, ``D`` head dim, ``L`` capacity.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer

INITIAL_CAPACITY = 128  # columns per slot before the first growth


class SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One layer's slots; :class:`SlotCache` says which rows and columns a pass writes."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: SlotCache) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("slot buffers are allocated when the first row joins")

    def allocate(self, like: DynamicLayer, slots: int, capacity: int) -> None:
        """Buffers with the heads, head dim, dtype and device of ``like`` (a prefill's)."""
        assert like.keys is not None and like.values is not None
        _, heads, _, key_dim = like.keys.shape
        self.keys = like.keys.new_zeros((slots, heads, capacity, key_dim))
        self.values = like.values.new_zeros((slots, heads, capacity, like.values.shape[-1]))
        self.is_initialized = True

    def grow(self, capacity: int) -> None:
        """Widen every slot to ``capacity`` columns (a copy of all slots: rare)."""
        assert self.keys is not None and self.values is not None
        for name in ("keys", "values"):
            old: torch.Tensor = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], capacity, old.shape[3]))
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's new key/value (``[R, H, 1, D]``) at its column; views to read."""
        assert self.keys is not None and self.values is not None
        owner = self._owner
        for buffer, states in ((self.keys, key_states), (self.values, value_states)):
            # One row per (row, head) of the buffer seen as [slots * H * L, D]: a plain
            # row copy, where indexing [rows, :, columns] took a slower scatter.
            flat = buffer.view(-1, buffer.shape[-1])
            flat.index_copy_(0, owner.flat_columns(buffer), states.reshape(-1, states.shape[-1]))
        count, length = len(owner.pass_rows), owner.kv_length
        return self.keys[:count, :, :length], self.values[:count, :, :length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.kv_length, 0

    def get_seq_length(self) -> int:
        # The query's offset for the causal mask: the one new column sees every column.
        return self._owner.kv_length - 1

    def get_max_length(self) -> int:
        return -1 if self.keys is None else int(self.keys.shape[2])


class SlotCache(Cache):
    """The slots of every layer, with the attention mask, ``[slots, L]``, beside them."""

    def __init__(self, num_layers: int, *, slots: int, max_length: int) -> None:
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])
        self.slots = slots
        self.max_length = max_length
        self.mask: torch.Tensor | None = None  # [slots, L] long, 1 on a row's real columns
        # What the next pass writes (set by begin_pass): rows 0..R-1 and their columns.
        self.pass_rows = torch.empty(0, dtype=torch.long)
        self.pass_columns = torch.empty(0, dtype=torch.long)
        self.kv_length = 0
        # (heads, capacity) -> [R * H] rows of a [slots * H * L, D] view that this pass
        # writes; the layers of a model share one.
        self._flat: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def capacity(self) -> int:
        """Columns each slot holds now."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def slot_layers(self) -> list[SlotLayer]:
        """The layers, typed."""
        return [layer for layer in self.layers if isinstance(layer, SlotLayer)]

    def join(self, slots: torch.Tensor, prefill: DynamicCache, mask: torch.Tensor) -> None:
        """Copy a prefill's rows (``[n, H, width, D]``, mask ``[n, width]``) into ``slots``
        (``[n]``), at columns ``0..width-1``; only those slots are written."""
        width = mask.shape[1]
        if self.mask is None:
            capacity = min(self.max_length, max(width + 1, INITIAL_CAPACITY))
            for layer, source in zip(self.slot_layers(), prefill.layers, strict=True):
                assert isinstance(source, DynamicLayer)
                layer.allocate(source, self.slots, capacity)
            self.mask = mask.new_zeros((self.slots, capacity))
        self.reserve(width + 1)
        for layer, source in zip(self.slot_layers(), prefill.layers, strict=True):
            assert isinstance(source, DynamicLayer)
            assert source.keys is not None and source.values is not None
            assert layer.keys is not None and layer.values is not None
            layer.keys[slots, :, :width] = source.keys
            layer.values[slots, :, :width] = source.values
        self.mask[slots] = 0
        self.mask[slots, :width] = mask

    def reserve(self, length: int) -> None:
        """Make room for ``length`` columns per slot; growing doubles the capacity, so it
        happens O(log max_length) times at most."""
        assert self.mask is not None
        if length <= self.capacity:
            return
        if length > self.max_length:
            raise ValueError(f"a row of {length} positions exceeds the cache's {self.max_length}")
        capacity = min(self.max_length, max(length, 2 * self.capacity))
        for layer in self.slot_layers():
            layer.grow(capacity)
        mask = self.mask.new_zeros((self.slots, capacity))
        mask[:, : self.mask.shape[1]] = self.mask
        self.mask = mask

    def begin_pass(self, rows: torch.Tensor, columns: torch.Tensor, kv_length: int) -> None:
        """The next pass runs slots ``rows`` (``[R]``, ``0..R-1``), each writing its column
        (``[R]``); attention reads columns ``0..kv_length-1``."""
        self.reserve(kv_length)
        assert self.mask is not None
        self.pass_rows, self.pass_columns, self.kv_length = rows, columns, kv_length
        self.mask[rows, columns] = 1
        self._flat = {}

    def flat_columns(self, buffer: torch.Tensor) -> torch.Tensor:
        """The rows of ``buffer`` (``[slots, H, L, D]``) seen as ``[slots * H * L, D]``
        that this pass writes, row-major over (pass row, head): ``[R * H]``."""
        _, heads, capacity, _ = buffer.shape
        key = (heads, capacity)
        if key not in self._flat:
            head = torch.arange(heads, device=buffer.device)
            starts = (self.pass_rows[:, None] * heads + head) * capacity  # [R, H]
            self._flat[key] = (starts + self.pass_columns[:, None]).reshape(-1)
        return self._flat[key]

    def pass_mask(self) -> torch.Tensor:
        """The attention mask of the next pass, a view ``[R, kv_length]``."""
        assert self.mask is not None
        return self.mask[: len(self.pass_rows), : self.kv_length]
