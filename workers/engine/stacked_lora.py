"""Mixed-adapter LoRA in a fixed number of batched ops per layer, whatever the adapters.

PEFT's per-row path loops over the distinct adapters of a batch in every LoRA layer, so a
pass costs more with each adapter it holds. Here each LoRA layer keeps the A and B
matrices of all its adapters in two stacked tensors (ranks zero-padded to the largest);
a pass gathers every row's own matrices and applies them with two ``bmm`` calls. PEFT's
modules are re-pointed at views into the stacks, so the weights still exist only once
and PEFT's plain path (one adapter per pass) reads the same memory.

Only plain LoRA on linear layers qualifies (no DoRA or other variants, no LoRA bias, no
embedding LoRA, no ``modules_to_save``); anything else keeps PEFT's per-row path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

BASE_SLOT = 0  # all-zero matrices: a base row gets no delta


@dataclass
class _Stack:
    """One LoRA layer's adapters; slot ``s`` of each tensor belongs to one adapter."""

    a: torch.Tensor  # [slots, r_max, in]
    b: torch.Tensor  # [slots, out, r_max]
    scale: torch.Tensor  # [slots]
    # This pass's per-row selection, kept while the rows of the batch stay the same.
    selected_for: int = -1
    rows_a: torch.Tensor | None = None  # [rows, r_max, in]
    rows_b: torch.Tensor | None = None  # [rows, out, r_max]
    rows_scale: torch.Tensor | None = None  # [rows, 1, 1]


def qualifies(model: nn.Module, peft_names: Mapping[str, str]) -> bool:
    """Whether every adapter on ``model`` is plain LoRA on linear layers."""
    wanted = set(peft_names.values())
    for module in model.modules():
        if isinstance(module, AuxiliaryTrainingWrapper):
            return False
        if not isinstance(module, LoraLayer):
            continue
        if set(module.lora_embedding_A) & wanted or set(module.lora_variant) & wanted:
            return False
        if getattr(module, "fan_in_fan_out", False):
            return False
        if any(module.lora_B[name].bias is not None for name in set(module.lora_B) & wanted):
            return False
    return True


class StackedLora:
    """Stacked adapter weights per LoRA layer and the forward hooks that apply them."""

    def __init__(self) -> None:
        self._stacks: dict[int, _Stack] = {}
        self._slots: dict[str, int] = {}
        self._rows: torch.Tensor | None = None  # [rows] slot of each row
        self._row_names: list[str] | None = None
        self._active = False  # inside a pass that wants the deltas
        self._pass_key = 0

    def rebuild(self, model: nn.Module, peft_names: Mapping[str, str]) -> None:
        """Stack the adapters in ``peft_names`` (ours -> PEFT's) of every LoRA layer."""
        self._slots = {name: slot for slot, name in enumerate(peft_names, start=1)}
        self._stacks = {}
        for module in model.modules():
            if isinstance(module, LoraLayer):
                stack = _stack_layer(module, {self._slots[n]: p for n, p in peft_names.items()})
                if stack is not None:
                    self._stacks[id(module)] = stack
        # Slots were renumbered: row slots and selections made from old stacks are stale.
        self._row_names = None
        self._pass_key += 1

    def begin(self, adapter_names: list[str], device: torch.device) -> None:
        """The next pass runs rows of these adapters (ours, or the base marker)."""
        if adapter_names != self._row_names:
            self._row_names = list(adapter_names)
            slots = [self._slots.get(name, BASE_SLOT) for name in adapter_names]
            self._rows = torch.tensor(slots, device=device)
            self._pass_key += 1
        self._active = True

    def end(self) -> None:
        """The pass is over: the hooks add nothing until the next :meth:`begin`."""
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


def _stack_layer(module: LoraLayer, slots: Mapping[int, str]) -> _Stack | None:
    """Stack this layer's adapters and point PEFT's weights at views into the stack."""
    present = {slot: name for slot, name in slots.items() if name in module.lora_A}
    if not present:
        return None
    first = _weight(module.lora_A[next(iter(present.values()))])
    r_max = max(_weight(module.lora_A[name]).shape[0] for name in present.values())
    out_features = _weight(module.lora_B[next(iter(present.values()))]).shape[0]
    size = max(slots, default=0) + 1
    a = first.new_zeros((size, r_max, first.shape[1]))
    b = first.new_zeros((size, out_features, r_max))
    scale = first.new_zeros(size)
    with torch.no_grad():
        for slot, name in present.items():
            weight_a = _weight(module.lora_A[name])
            weight_b = _weight(module.lora_B[name])
            rank = weight_a.shape[0]
            a[slot, :rank].copy_(weight_a)
            b[slot, :, :rank].copy_(weight_b)
            scale[slot] = float(module.scaling[name])
            weight_a.data = a[slot, :rank]
            weight_b.data = b[slot, :, :rank]
    return _Stack(a=a, b=b, scale=scale)


def _weight(linear: nn.Module) -> torch.Tensor:
    weight = linear.weight
    assert isinstance(weight, torch.Tensor)
    return weight
