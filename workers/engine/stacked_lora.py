"""Mixed-adapter LoRA in a fixed number of batched ops per layer, whatever the adapters.

PEFT's per-row path loops over the distinct adapters of a batch in every LoRA layer, so a
pass costs more with each adapter it holds. Here each LoRA layer keeps the A and B
matrices of its adapters in two stacked tensors with one slot per adapter of the cache
(ranks zero-padded to the layer's largest); a pass gathers every row's own matrices and
applies them with two ``bmm`` calls. PEFT's modules are re-pointed at views into the
stacks, so the weights still exist only once and PEFT's plain path (one adapter per
pass) reads the same memory. Loading or evicting an adapter touches only its own slot.

Only plain LoRA on linear layers is stacked (no DoRA or other variants, no LoRA bias, no
embedding LoRA, no ``modules_to_save``); while such an adapter is loaded, mixed passes
take PEFT's per-row path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

BASE_SLOT = 0  # never assigned: all-zero matrices, a base row gets no delta


@dataclass
class _Stack:
    """One LoRA layer's adapters; slot ``s`` of each tensor belongs to one adapter."""

    a: torch.Tensor  # [slots, r_max, in]
    b: torch.Tensor  # [slots, out, r_max]
    scale: torch.Tensor  # [slots]
    peft_names: dict[int, str]  # slot -> PEFT's name of the adapter in it
    # This pass's per-row selection, kept while the rows of the batch stay the same.
    selected_for: int = -1
    rows_a: torch.Tensor | None = None  # [rows, r_max, in]
    rows_b: torch.Tensor | None = None  # [rows, out, r_max]
    rows_scale: torch.Tensor | None = None  # [rows, 1, 1]


def stackable(model: nn.Module, peft_name: str) -> bool:
    """Whether adapter ``peft_name`` is plain LoRA on linear layers only."""
    for module in model.modules():
        if isinstance(module, AuxiliaryTrainingWrapper) and peft_name in module._adapters:
            return False
        if not isinstance(module, LoraLayer):
            continue
        if peft_name in module.lora_embedding_A or peft_name in module.lora_variant:
            return False
        if peft_name in module.lora_A and (
            getattr(module, "fan_in_fan_out", False) or module.lora_B[peft_name].bias is not None
        ):
            return False
    return True


class StackedLora:
    """Stacked adapter weights per LoRA layer and the forward hook that applies them."""

    def __init__(self, capacity: int) -> None:
        self._size = capacity + 1  # one slot per cached adapter, plus the base slot
        self._stacks: dict[int, _Stack] = {}
        self._slots: dict[str, int] = {}  # our adapter name -> slot
        self._free = list(range(capacity, BASE_SLOT, -1))
        self._unstackable: set[str] = set()
        self._rows: torch.Tensor | None = None  # [rows] slot of each row
        self._row_names: list[str] | None = None
        self._active = False  # inside a pass that wants the deltas
        self._pass_key = 0

    @property
    def usable(self) -> bool:
        """Whether every loaded adapter is stacked (else mixed passes need PEFT's path)."""
        return not self._unstackable

    def add(self, model: nn.Module, name: str, peft_name: str) -> None:
        """Stack the freshly loaded adapter ``peft_name`` (ours: ``name``) in a free slot."""
        if not self._free or not stackable(model, peft_name):
            self._unstackable.add(name)
            return
        slot = self._free.pop()
        self._slots[name] = slot
        for module in model.modules():
            if isinstance(module, LoraLayer) and peft_name in module.lora_A:
                self._put(module, slot, peft_name)
        self._invalidate()

    def remove(self, name: str) -> None:
        """Free the slot of ``name`` (PEFT has already dropped its modules)."""
        self._unstackable.discard(name)
        slot = self._slots.pop(name, None)
        if slot is not None:
            # Zero the slot everywhere: its next owner may target fewer layers, and a
            # layer it does not target must add nothing to its rows.
            with torch.no_grad():
                for stack in self._stacks.values():
                    stack.peft_names.pop(slot, None)
                    stack.a[slot].zero_()
                    stack.b[slot].zero_()
                    stack.scale[slot] = 0.0
            self._free.append(slot)
            self._invalidate()

    def begin(self, adapter_names: list[str], device: torch.device) -> None:
        """The next pass runs rows of these adapters (ours, or the base marker)."""
        if adapter_names != self._row_names:
            self._row_names = list(adapter_names)
            slots = [self._slots.get(name, BASE_SLOT) for name in adapter_names]
            self._rows = torch.tensor(slots, device=device)
            self._pass_key += 1
        self._active = True

    def end(self) -> None:
        """The pass is over: the hook adds nothing until the next :meth:`begin`."""
        self._active = False

    def add_delta(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: torch.Tensor,
    ) -> torch.Tensor | None:
        """Forward hook of a LoRA layer: add each row's own LoRA delta to ``output``."""
        rows = self._rows
        stack = self._stacks.get(id(module))
        if not self._active or rows is None or stack is None:
            return None
        if stack.selected_for != self._pass_key:
            stack.rows_a = stack.a.index_select(0, rows)
            stack.rows_b = stack.b.index_select(0, rows)
            stack.rows_scale = stack.scale.index_select(0, rows)[:, None, None]
            stack.selected_for = self._pass_key
        assert stack.rows_a is not None and stack.rows_b is not None
        assert stack.rows_scale is not None
        x = args[0] if args else kwargs["x"]  # [rows, T, in]
        hidden = torch.bmm(x.to(stack.a.dtype), stack.rows_a.transpose(1, 2))  # [rows, T, r]
        delta = torch.bmm(hidden * stack.rows_scale, stack.rows_b.transpose(1, 2))
        return output + delta.to(output.dtype)  # [rows, T, out]

    def _invalidate(self) -> None:
        # Slots changed hands: per-row slots and selections made before are stale.
        self._row_names = None
        self._pass_key += 1

    def _put(self, module: LoraLayer, slot: int, peft_name: str) -> None:
        """Copy one adapter's matrices of one layer into ``slot``; point PEFT at them."""
        weight_a = _weight(module.lora_A[peft_name])  # [r, in]
        weight_b = _weight(module.lora_B[peft_name])  # [out, r]
        rank = weight_a.shape[0]
        stack = self._stacks.get(id(module))
        if stack is None or stack.a.shape[1] < rank:
            stack = self._grown(module, stack, weight_a, weight_b)
        with torch.no_grad():
            stack.a[slot].zero_()
            stack.b[slot].zero_()
            stack.a[slot, :rank].copy_(weight_a)
            stack.b[slot, :, :rank].copy_(weight_b)
            stack.scale[slot] = float(module.scaling[peft_name])
        stack.peft_names[slot] = peft_name
        _point(module, stack, slot)

    def _grown(
        self, module: LoraLayer, old: _Stack | None, weight_a: torch.Tensor, weight_b: torch.Tensor
    ) -> _Stack:
        """A stack for ``module`` wide enough for ``weight_a``'s rank, holding ``old``'s."""
        rank = weight_a.shape[0] if old is None else max(weight_a.shape[0], old.a.shape[1])
        stack = _Stack(
            a=weight_a.new_zeros((self._size, rank, weight_a.shape[1])),
            b=weight_b.new_zeros((self._size, weight_b.shape[0], rank)),
            scale=weight_a.new_zeros(self._size),
            peft_names=dict(old.peft_names) if old is not None else {},
        )
        if old is not None:
            old_rank = old.a.shape[1]
            with torch.no_grad():
                stack.a[:, :old_rank].copy_(old.a)
                stack.b[:, :, :old_rank].copy_(old.b)
                stack.scale.copy_(old.scale)
            for slot in stack.peft_names:
                _point(module, stack, slot)  # off the old stack, which can then go
        self._stacks[id(module)] = stack
        return stack


def _point(module: LoraLayer, stack: _Stack, slot: int) -> None:
    """Make PEFT's A and B of the adapter in ``slot`` views into ``stack``."""
    peft_name = stack.peft_names[slot]
    weight_a = _weight(module.lora_A[peft_name])
    weight_b = _weight(module.lora_B[peft_name])
    rank = weight_a.shape[0]
    weight_a.data = stack.a[slot, :rank]
    weight_b.data = stack.b[slot, :, :rank]


def _weight(linear: nn.Module) -> torch.Tensor:
    weight = linear.weight
    assert isinstance(weight, torch.Tensor)
    return weight
