"""Device slots for plain LoRA: stacked weights per base module and one hook that applies them.

PEFT's per-row path loops over the distinct adapters of a batch in every LoRA layer, and
loading an adapter through PEFT creates modules and reads its folder. Here each base
linear module an adapter targets keeps the A and B matrices of every slot in two stacked
tensors (ranks zero-padded to the module's largest), both kept transposed (``in`` before
the rank, the rank before ``out``) so that a pass's selection is already the contiguous
operand ``bmm`` wants. A forward hook on the *base* module adds each row's delta. On a
CPU in float32 that is one call of ``csrc/lora_delta.c`` (:meth:`StackedLora.add_on_kernel`),
which walks the pass's rows in runs of one slot, reads each adapter once and adds in
place, with no gather, padding or scatter of rows (faster than the PyTorch path per hooked
module: ``bench/cpu_kernels.py``, figures in docs/SERVING.md, "Where our CPU step goes").
Elsewhere (CUDA, half precision, no gcc) it is two ``bmm`` calls over the pass's rows
grouped by slot, each adapter read once per pass (:mod:`row_groups`), or two matmuls
when every row uses one slot. Moving an adapter in
is a ``copy_`` of its host tensors into a free slot; moving it out zeroes its scales. No
PEFT module is involved, so PEFT's own adapters (the ones this path cannot hold)
compose: PEFT wraps the base module and still calls it, and its rows get slot 0, whose
delta is zero.

Hooks on ``nn.Linear`` fire for bitsandbytes ``Linear8bitLt``/``Linear4bit`` too (they
subclass it). Not thread-safe: only the model thread calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workers.adapters.host_weights import HostAdapter
from workers.engine import native
from workers.engine.row_groups import RowGroups, group_rows, slot_runs

BASE_SLOT = 0  # never assigned: a base row (or a PEFT row) gets no delta from the stacks
# PEFT keeps adapter weights in float32 even on a half-precision base (its
# autocast_adapter_dtype); the stacks do the same, so both paths compute alike.
STACK_DTYPE = torch.float32
# csrc/lora_delta.c: x, out, a, b, scale, order, starts, slots, then 7 sizes and strides.
_KERNEL_ARGUMENTS = (native.POINTER,) * 8 + (native.INT,) * 7


@dataclass
class _Stack:
    """One base module's slots; slot ``s`` of each tensor belongs to one adapter."""

    a: torch.Tensor  # [slots, in, r_max]: A transposed
    b: torch.Tensor  # [slots, r_max, out]: B transposed
    scale: torch.Tensor  # [slots]
    # Host mirrors, so a pass decides what to compute without reading the device.
    scales: list[float]  # [slots]; 0.0: the slot's adapter does not target this module
    ranks: list[int]  # [slots]
    # This pass's per-group selection, kept while the rows of the batch stay the same.
    selected_for: int = -1
    groups: tuple[torch.Tensor, torch.Tensor] | None = field(default=None)


@dataclass(frozen=True)
class _PassGroups:
    """:class:`~workers.engine.row_groups.RowGroups` of a pass, as device tensors."""

    slots: torch.Tensor  # [G]
    size: int  # M
    # [G * M] and [R]; None when each row is its own group, in order (no gather needed).
    gather: torch.Tensor | None
    scatter: torch.Tensor | None


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The base model's linear modules by qualified name (before PEFT wraps any)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


class StackedLora:
    """``capacity`` device slots over the base model's linear modules."""

    def __init__(
        self,
        modules: Mapping[str, nn.Linear],
        capacity: int,
        *,
        cpu_kernel: bool = True,
    ) -> None:
        """``cpu_kernel``: add the deltas through ``csrc/lora_delta.c`` on a CPU, in
        float32, where it is built."""
        self._modules = dict(modules)
        self._cpu_kernel = cpu_kernel
        if cpu_kernel and any(m.weight.device.type == "cpu" for m in self._modules.values()):
            self._kernel()  # built now rather than in the first pass
        self._size = capacity + 1  # the slots, plus the base slot
        self._stacks: dict[str, _Stack] = {}
        self._by_module: dict[int, _Stack] = {}  # id(base module) -> its stack
        self._slots: dict[str, int] = {}  # adapter name -> slot
        self._free = list(range(capacity, BASE_SLOT, -1))
        self._groups: _PassGroups | None = None  # this pass's rows grouped by slot
        # The same rows in runs of one slot, for the CPU kernel: order, starts, slots.
        self._runs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._row_names: list[str] | None = None
        self._pass_slots: frozenset[int] = frozenset()  # this pass's slots, base excluded
        self._uniform = False  # every row of this pass uses the same slot
        self._active = False  # inside a pass that wants the deltas
        self._pass_key = 0

    def names(self) -> list[str]:
        """Adapters in the slots."""
        return list(self._slots)

    def nbytes(self) -> int:
        """Device bytes of the stacks: every slot's, free ones included (allocated once)."""
        return sum(t.nbytes for s in self._stacks.values() for t in (s.a, s.b, s.scale))

    def holds(self, name: str) -> bool:
        """Whether ``name`` is in a slot."""
        return name in self._slots

    def can_hold(self, adapter: HostAdapter) -> bool:
        """Whether ``adapter`` is plain LoRA on linear modules only, and a slot is free."""
        return (
            bool(self._free)
            and adapter.stackable
            and all(name in self._modules for name in adapter.modules)
        )

    def add(self, name: str, adapter: HostAdapter) -> None:
        """Copy ``adapter``'s host tensors into a free slot (``can_hold`` must be true)."""
        slot = self._free.pop()
        self._slots[name] = slot
        with torch.no_grad():
            for module, weights in adapter.modules.items():
                rank = weights.a.shape[0]
                stack = self._stack(module, rank)
                stack.a[slot, :, :rank].copy_(weights.a.T, non_blocking=True)
                stack.a[slot, :, rank:].zero_()
                stack.b[slot, :rank].copy_(weights.b.T, non_blocking=True)
                stack.b[slot, rank:].zero_()
                stack.scale[slot] = weights.scale
                stack.scales[slot], stack.ranks[slot] = weights.scale, rank
        self._invalidate()

    def remove(self, name: str) -> None:
        """Free the slot of ``name``: zero scales, so its stale matrices add nothing."""
        slot = self._slots.pop(name)
        with torch.no_grad():
            for stack in self._stacks.values():
                if stack.scales[slot]:
                    stack.scale[slot] = 0.0
                    stack.scales[slot], stack.ranks[slot] = 0.0, 0
        self._free.append(slot)
        self._invalidate()

    def _row_groups(self, slots: Sequence[int]) -> RowGroups:
        """A pass's rows (their slots) in the groups the PyTorch path runs them in
        (bench/cpu_kernels.py overrides it to compare other groupings)."""
        return group_rows(slots)

    def begin(self, adapter_names: list[str], device: torch.device) -> None:
        """The next pass runs rows of these adapters (names not in a slot get no delta)."""
        if adapter_names != self._row_names:
            self._row_names = list(adapter_names)
            slots = [self._slots.get(name, BASE_SLOT) for name in adapter_names]
            self._pass_slots = frozenset(slots) - {BASE_SLOT}
            self._uniform = len(set(slots)) == 1
            groups = self._row_groups(slots)
            per_row = groups.size == 1
            self._groups = _PassGroups(
                slots=torch.tensor(groups.slots, device=device),
                size=groups.size,
                gather=None if per_row else torch.tensor(groups.gather, device=device),
                scatter=None if per_row else torch.tensor(groups.scatter, device=device),
            )
            runs = slot_runs(slots, skip=BASE_SLOT)
            self._runs = (
                torch.tensor(runs.order, dtype=torch.long),
                torch.tensor(runs.starts, dtype=torch.long),
                torch.tensor(runs.slots, dtype=torch.long),
            )
            self._pass_key += 1
        self._active = bool(self._pass_slots)

    def end(self) -> None:
        """The pass is over: the hooks add nothing until the next :meth:`begin`."""
        self._active = False

    def delta(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """This pass's LoRA delta of base module ``module`` for its input ``x`` (``[rows,
        T, in]``): ``[rows, T, out]`` in the stacks' dtype, or None when no row's adapter
        targets ``module`` (or no pass that wants deltas is under way)."""
        stack = self._by_module.get(id(module))
        if not self._active or stack is None:
            return None
        used = [slot for slot in self._pass_slots if stack.scales[slot]]
        if not used:
            return None  # no adapter of this pass targets this module
        x = x.to(STACK_DTYPE)
        # All rows on one slot (a pass of one adapter, the common case) needs no gather.
        return self._one_slot(stack, used[0], x) if self._uniform else self._grouped(stack, x)

    def _hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> torch.Tensor | None:
        """Forward hook of a base linear module: add each row's own LoRA delta."""
        x = args[0] if args else next(iter(kwargs.values()))
        if self.add_on_kernel(module, x, output):
            return None
        delta = self.delta(module, x)
        if delta is None:
            return None
        summed: torch.Tensor = output + delta.to(output.dtype)  # [rows, T, out]
        return summed

    def add_on_kernel(self, module: nn.Module, x: torch.Tensor, output: Any) -> bool:
        """On a CPU, in float32: add this pass's deltas of ``module`` for its input ``x``
        (``[rows, T, in]``) into its ``output`` (``[rows, T, out]``) in place, through
        ``csrc/lora_delta.c``. False where that does not apply (another device or dtype,
        the kernel off or not built): :meth:`delta` is the way there."""
        stack = self._by_module.get(id(module))
        if not (self._cpu_kernel and self._active) or stack is None or self._runs is None:
            return False
        tensors = (x, output, stack.a)
        if not all(
            isinstance(t, torch.Tensor)
            and t.device.type == "cpu"
            and t.dtype == STACK_DTYPE
            and t.is_contiguous()
            for t in tensors
        ):
            return False
        kernel = self._kernel()
        if kernel is None:
            return False
        order, starts, slots = self._runs
        _, tokens, features = x.shape  # [R, T, in]
        _, rank, out_features = stack.b.shape
        kernel(
            x.data_ptr(), output.data_ptr(), stack.a.data_ptr(), stack.b.data_ptr(),
            stack.scale.data_ptr(), order.data_ptr(), starts.data_ptr(), slots.data_ptr(),
            len(slots), tokens, features, out_features, rank, features, out_features,
        )  # fmt: skip
        return True

    @staticmethod
    def _one_slot(stack: _Stack, slot: int, x: torch.Tensor) -> torch.Tensor:
        """The delta when every row uses ``slot``, in the adapter's own rank."""
        rank = stack.ranks[slot]
        hidden = x @ stack.a[slot, :, :rank]  # [rows, T, r]
        return (hidden * stack.scales[slot]) @ stack.b[slot, :rank]  # [rows, T, out]

    def _grouped(self, stack: _Stack, x: torch.Tensor) -> torch.Tensor:
        """The delta of rows of several slots: one ``bmm`` pair over the rows grouped by
        slot (:mod:`row_groups`), each group reading its adapter once."""
        groups = self._groups
        assert groups is not None
        if stack.selected_for != self._pass_key:
            # The scales go into the selected B once per selection, not into every step.
            scale = stack.scale.index_select(0, groups.slots)[:, None, None]  # [G, 1, 1]
            stack.groups = (
                stack.a.index_select(0, groups.slots),  # [G, in, r_max]
                stack.b.index_select(0, groups.slots) * scale,  # [G, r_max, out]
            )
            stack.selected_for = self._pass_key
        assert stack.groups is not None
        group_a, group_b = stack.groups
        if groups.gather is None or groups.scatter is None:  # one group per row: [R, T, in]
            return torch.bmm(torch.bmm(x, group_a), group_b)
        count, size = len(groups.slots), groups.size
        _, tokens, features = x.shape
        # [G * M, T, in] -> [G, M * T, in]: a group's rows and tokens share its A and B.
        blocks = x.index_select(0, groups.gather).reshape(count, size * tokens, features)
        delta = torch.bmm(torch.bmm(blocks, group_a), group_b)  # [G, M * T, out]
        return delta.reshape(count * size, tokens, -1).index_select(0, groups.scatter)

    @staticmethod
    def _kernel() -> Any | None:
        return native.function("lora_delta", "loraq_lora_delta", _KERNEL_ARGUMENTS)

    def _stack(self, module: str, rank: int) -> _Stack:
        """The stack of ``module``, made (and its hook registered) or widened to ``rank``."""
        old = self._stacks.get(module)
        if old is not None and old.a.shape[2] >= rank:
            return old
        linear = self._modules[module]
        device = linear.weight.device
        width = rank if old is None else max(rank, old.a.shape[2])
        stack = _Stack(
            a=torch.zeros(
                (self._size, linear.in_features, width), dtype=STACK_DTYPE, device=device
            ),
            b=torch.zeros(
                (self._size, width, linear.out_features), dtype=STACK_DTYPE, device=device
            ),
            scale=torch.zeros(self._size, dtype=STACK_DTYPE, device=device),
            scales=[0.0] * self._size if old is None else old.scales,
            ranks=[0] * self._size if old is None else old.ranks,
        )
        if old is None:
            linear.register_forward_hook(self._hook, with_kwargs=True)
        else:
            old_width = old.a.shape[2]
            stack.a[:, :, :old_width].copy_(old.a)
            stack.b[:, :old_width].copy_(old.b)
            stack.scale.copy_(old.scale)
        self._stacks[module] = stack
        self._by_module[id(linear)] = stack
        return stack

    def _invalidate(self) -> None:
        # Slots changed hands: per-row slots and selections made before are stale.
        self._row_names = None
        self._pass_key += 1
