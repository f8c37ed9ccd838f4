"""The stacked LoRA hooks on the CPU kernel add what their PyTorch path adds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from workers.adapters.host_weights import HostAdapter, LoraWeights
from workers.engine import native
from workers.engine.row_groups import slot_runs
from workers.engine.stacked_lora import StackedLora

WIDTH, OUT = 24, 40


def adapter(seed: int, rank: int, modules: tuple[str, ...]) -> HostAdapter:
    generator = torch.Generator().manual_seed(seed)
    weights = {
        name: LoraWeights(
            a=torch.randn(rank, WIDTH, generator=generator),
            b=torch.randn(OUT, rank, generator=generator),
            scale=0.5 + seed,
        )
        for name in modules
    }
    return HostAdapter(folder=Path("."), stackable=True, modules=weights)


def hooked_outputs(rows: list[str], tokens: int, kernel: bool) -> list[torch.Tensor]:
    """Both modules' outputs for ``rows`` (adapter names; "" for a base row)."""
    torch.manual_seed(0)
    modules = {"m0": nn.Linear(WIDTH, OUT, bias=False), "m1": nn.Linear(WIDTH, OUT)}
    stacked = StackedLora(modules, capacity=4)
    stacked.add("a", adapter(1, 4, ("m0", "m1")))
    stacked.add("b", adapter(2, 8, ("m0", "m1")))  # a wider rank: "a" is zero-padded
    stacked.add("c", adapter(3, 2, ("m1",)))  # does not target m0
    x = torch.randn(len(rows), tokens, WIDTH)
    stacked.begin(rows, x.device)
    with torch.inference_mode():
        if kernel:
            outputs = [module(x) for module in modules.values()]
        else:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(native, "function", lambda *args: None)
                outputs = [module(x) for module in modules.values()]
    stacked.end()
    return outputs


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the kernel is built by gcc")
@pytest.mark.parametrize(
    ("rows", "tokens"),
    [
        (["a", "b", "", "c", "a", "b", "a"], 1),  # mixed, with a base row
        (["b"] * 5, 1),  # one adapter
        (["c", "", "c"], 3),  # a prefill; m0 gets nothing from "c"
        (["a", "b", "c", "a"] * 6, 1),  # grouped on the PyTorch path
    ],
)
def test_the_kernel_adds_what_the_pytorch_path_adds(rows: list[str], tokens: int) -> None:
    assert native.library("lora_delta") is not None
    for ours, theirs in zip(
        hooked_outputs(rows, tokens, kernel=True),
        hooked_outputs(rows, tokens, kernel=False),
        strict=True,
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_slot_runs_group_rows_by_slot_and_leave_base_rows_out() -> None:
    runs = slot_runs([2, 0, 1, 2, 1, 0, 3], skip=0)
    assert runs.order == [0, 3, 2, 4, 6]
    assert runs.starts == [0, 2, 4, 5]
    assert runs.slots == [2, 1, 3]
    assert slot_runs([0, 0], skip=0).order == []


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the kernel is built by gcc")
def test_each_caller_gets_a_function_object_of_its_own() -> None:
    """ctypes shares one object per attribute: argtypes set by one caller would be
    another's, and a call with the wrong argtypes passes garbage."""
    narrow = native.function("lora_delta", "loraq_lora_delta", (native.INT,))
    wide = native.function("lora_delta", "loraq_lora_delta", (native.INT, native.INT))
    assert narrow is not None and wide is not None
    assert narrow.argtypes == [native.INT] and wide.argtypes == [native.INT, native.INT]
