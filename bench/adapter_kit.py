"""Many random LoRA adapters for one base model, fast enough for a thousand per bench run.

PEFT writes the first adapter (``get_peft_model`` + ``save_pretrained``), so the config
and the tensor names and shapes are exactly what PEFT produces for this base model. Every
other adapter reuses that config and layout with tensors drawn from its own seed, written
with safetensors directly: building a PEFT model per adapter would cost about a second
each, and the results would be the same files with other numbers in them.

Not a benchmark: ``make bench`` runs only the modules listed in its ``BENCHES``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
RANK = 8
TARGET_MODULES = ("q_proj", "v_proj")


def adapter_names(count: int) -> list[str]:
    """``ad0000``, ``ad0001``, …: names that sort in creation order."""
    return [f"ad{index:04d}" for index in range(count)]


def lora_config() -> LoraConfig:
    """The adapters' config: rank 8 on q/v, random A *and* B.

    ``init_lora_weights=False`` keeps B random as well: PEFT's default zero B would leave
    the base model's output unchanged, and then wrong routing could not show.
    """
    return LoraConfig(
        r=RANK,
        lora_alpha=2 * RANK,
        target_modules=list(TARGET_MODULES),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def write_template(base: Path, folder: Path, *, seed: int) -> Path:
    """The first adapter, written by PEFT itself; the others copy its layout."""
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    get_peft_model(model, lora_config()).save_pretrained(str(folder))
    return folder


def random_tensors(layout: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Tensors of ``layout`` drawn as PEFT draws them with ``init_lora_weights=False``.

    That leaves ``nn.Linear``'s own init: uniform in ±1/sqrt(fan_in), where lora_A
    ``[r, in_features]`` has fan_in = in_features and lora_B ``[out_features, r]`` has r.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(layout.items()):
        bound = 1 / math.sqrt(shape[1])
        values = torch.rand(shape, generator=generator) * (2 * bound) - bound
        tensors[name] = values.contiguous()
    return tensors


def read_layout(weights: Path) -> dict[str, torch.Size]:
    """Tensor name -> shape of a safetensors file (headers only, no tensor is read)."""
    with safe_open(str(weights), framework="pt") as handle:
        return {name: torch.Size(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def generate_adapters(base: Path, root: Path, count: int, *, seed: int = 0) -> dict[str, Path]:
    """``count`` valid adapters with distinct weights under ``root``; name -> folder.

    Deterministic: the same ``seed`` gives the same files. Adapter ``i`` draws from seed
    ``seed + i`` (the first through PEFT, the rest through :func:`random_tensors`).
    """
    names = adapter_names(count)
    if not names:
        return {}
    root.mkdir(parents=True, exist_ok=True)
    template = write_template(base, root / names[0], seed=seed)
    layout = read_layout(template / WEIGHTS_FILE)
    folders = {names[0]: template}
    for index, name in enumerate(names[1:], start=1):
        folder = root / name
        folder.mkdir(exist_ok=True)
        shutil.copyfile(template / CONFIG_FILE, folder / CONFIG_FILE)
        save_file(
            random_tensors(layout, seed + index), str(folder / WEIGHTS_FILE), {"format": "pt"}
        )
        folders[name] = folder
    return folders
