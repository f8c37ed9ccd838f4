"""Read an adapter folder into host memory: validated, parsed, classified (loader thread).

This is the disk → host step of the tiers. The result holds, per base module the adapter
targets, its A and B matrices as CPU tensors and PEFT's scale for that module, so moving
the adapter onto the device is a copy. Adapters the stacked device path cannot apply
(variants such as DoRA, LoRA bias, ``fan_in_fan_out``, embedding LoRA,
``modules_to_save``, …) are still validated here but keep no tensors: PEFT loads them
from their folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file

from workers.adapters.validation import WEIGHTS_FILES, ModuleShape, validate_adapter

# PEFT's key of one LoRA matrix of a linear module, with the adapter name removed.
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")
# Config fields that make PEFT build something other than x @ A.T @ B.T * scale.
_UNSTACKABLE_FIELDS = (
    "lora_bias",
    "fan_in_fan_out",
    "modules_to_save",
    "trainable_token_indices",
    "target_parameters",
    "layer_replication",
)


@dataclass(frozen=True)
class LoraWeights:
    """One target module's LoRA: ``delta = x @ a.T @ b.T * scale``."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float


@dataclass(frozen=True)
class HostAdapter:
    """A validated adapter in host memory; ``modules`` is empty unless it is stackable."""

    folder: Path
    stackable: bool
    modules: Mapping[str, LoraWeights]  # base module name -> weights

    @property
    def size_bytes(self) -> int:
        """Host memory the tensors take."""
        return sum(
            w.a.numel() * w.a.element_size() + w.b.numel() * w.b.element_size()
            for w in self.modules.values()
        )

    @property
    def max_rank(self) -> int:
        """The largest rank over its modules (0 when it keeps no tensors)."""
        return max((w.a.shape[0] for w in self.modules.values()), default=0)


def read_adapter(
    folder: Path,
    *,
    shapes: Mapping[str, ModuleShape],
    max_rank: int,
    pin_memory: bool = False,
) -> HostAdapter:
    """Validate ``folder`` against the base, then parse it (raises ``incompatible_adapter``).

    ``shapes`` are the base model's linear modules; ``pin_memory`` page-locks the
    tensors so that a CUDA copy is asynchronous.
    """
    validate_adapter(folder, shapes, max_rank)
    return parse_adapter(folder, shapes=shapes, pin_memory=pin_memory)


def parse_adapter(
    folder: Path, *, shapes: Mapping[str, ModuleShape], pin_memory: bool = False
) -> HostAdapter:
    """``folder``'s weights per module and whether they stack (a module absent from
    ``shapes``, such as an embedding, makes the adapter PEFT's)."""
    config = LoraConfig.from_pretrained(str(folder))
    weights_file = folder / WEIGHTS_FILES[0]
    modules = None
    if _config_stackable(config) and weights_file.is_file():
        modules = _modules(load_file(str(weights_file), device="cpu"), config, shapes)
    if modules is None:
        return HostAdapter(folder=folder, stackable=False, modules={})
    if pin_memory:
        modules = {
            name: LoraWeights(w.a.pin_memory(), w.b.pin_memory(), w.scale)
            for name, w in modules.items()
        }
    return HostAdapter(folder=folder, stackable=True, modules=modules)


def module_scale(config: LoraConfig, module: str) -> float:
    """PEFT's scaling of ``module``: alpha / r, or alpha / sqrt(r) with rsLoRA, where
    ``rank_pattern`` and ``alpha_pattern`` may override r and alpha per module."""
    ranks: dict[str, int] = config.rank_pattern or {}
    alphas: dict[str, float] = config.alpha_pattern or {}
    rank = ranks.get(get_pattern_key(list(ranks), module), config.r)
    alpha = alphas.get(get_pattern_key(list(alphas), module), config.lora_alpha)
    return float(alpha / math.sqrt(rank) if config.use_rslora else alpha / rank)


def _config_stackable(config: LoraConfig) -> bool:
    """Plain LoRA: no variant (PEFT tags their fields), none of the extras we cannot stack."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if spec.metadata.get("is_lora_variant") and value:
            return False
        if spec.name == "init_lora_weights" and value in spec.metadata.get("lora_variants", ()):
            return False
    return not any(getattr(config, name, None) for name in _UNSTACKABLE_FIELDS)


def _modules(
    tensors: Mapping[str, torch.Tensor], config: LoraConfig, shapes: Mapping[str, ModuleShape]
) -> dict[str, LoraWeights] | None:
    """Pairs of A and B per linear module; ``None`` when any key is something else."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None or match["module"] not in shapes:
            return None  # an embedding LoRA, a DoRA magnitude, a saved module, …
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    modules = {}
    for module, pair in parts.items():
        if set(pair) != {"A", "B"} or pair["A"].shape[0] != pair["B"].shape[1]:
            return None
        modules[module] = LoraWeights(pair["A"], pair["B"], module_scale(config, module))
    return modules
