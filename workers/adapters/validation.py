"""Check an adapter folder against the base model before its first load.

Reads only ``adapter_config.json`` and the safetensors header (no tensors), so a bad
adapter is refused with a clear ``incompatible_adapter`` error instead of failing inside
PEFT halfway through injecting its layers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn

from schemas import ErrorType
from workers.adapters.registry import CONFIG_FILE
from workers.errors import EngineError

WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# PEFT stores the adapter's tensors under this prefix, without the adapter name.
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")


@dataclass(frozen=True)
class ModuleShape:
    """Input and output width of a base module an adapter may target."""

    in_features: int
    out_features: int


def base_module_shapes(model: nn.Module) -> dict[str, ModuleShape]:
    """Linear-like modules of the base model by qualified name (quantized ones included)."""
    shapes: dict[str, ModuleShape] = {}
    for name, module in model.named_modules():
        in_features = getattr(module, "in_features", None)
        out_features = getattr(module, "out_features", None)
        if isinstance(in_features, int) and isinstance(out_features, int):
            shapes[name] = ModuleShape(in_features, out_features)
    return shapes


def _incompatible(folder: Path, why: str) -> EngineError:
    return EngineError(ErrorType.INCOMPATIBLE_ADAPTER, f"adapter {folder.name!r}: {why}")


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise _incompatible(folder, f"cannot read {CONFIG_FILE}: {exc}") from exc
    if not isinstance(config, dict):
        raise _incompatible(folder, f"{CONFIG_FILE} is not a JSON object")
    return config


def _targets_match(targets: str | list[str], module_names: Iterable[str]) -> list[str]:
    """Targets (PEFT's rules: regex string, or suffix names) that match no module."""
    names = list(module_names)
    if isinstance(targets, str):
        if targets == "all-linear" or any(re.fullmatch(targets, name) for name in names):
            return []
        return [targets]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def _check_config(config: Mapping[str, Any], folder: Path, max_rank: int) -> None:
    if config.get("peft_type") != "LORA":
        raise _incompatible(folder, f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    if config.get("use_dora"):
        raise _incompatible(folder, "DoRA adapters cannot share a mixed-adapter batch")
    ranks = [config.get("r"), *dict(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(rank, int) and rank >= 1 for rank in ranks):
        raise _incompatible(folder, f"invalid rank in {CONFIG_FILE}")
    if max(ranks) > max_rank:
        raise _incompatible(folder, f"rank {max(ranks)} is over max_lora_rank {max_rank}")


def _check_weights(folder: Path, shapes: Mapping[str, ModuleShape]) -> None:
    path = folder / WEIGHTS_FILES[0]
    if not path.is_file():
        if not (folder / WEIGHTS_FILES[1]).is_file():
            raise _incompatible(folder, f"no {' or '.join(WEIGHTS_FILES)}")
        return  # a pickled checkpoint has no header to read; PEFT checks shapes on load
    try:
        with safe_open(str(path), framework="pt") as weights:
            tensors = {key: weights.get_slice(key).get_shape() for key in weights.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise _incompatible(folder, f"cannot read {path.name}: {exc}") from exc
    for key, shape in tensors.items():
        match = _KEY.match(key)
        if match is None:
            continue
        module = shapes.get(match["module"])
        if module is None:
            raise _incompatible(folder, f"module {match['module']!r} does not exist in the base")
        expected = module.in_features if match["part"] == "A" else module.out_features
        actual = shape[1] if match["part"] == "A" else shape[0]
        if actual != expected:
            raise _incompatible(
                folder, f"{match['module']} lora_{match['part']} width {actual} != {expected}"
            )


def validate_adapter(folder: Path, shapes: Mapping[str, ModuleShape], max_rank: int) -> None:
    """Raise ``incompatible_adapter`` unless ``folder`` is a LoRA adapter this base can use."""
    config = _read_config(folder)
    _check_config(config, folder, max_rank)
    targets = config.get("target_modules")
    if not isinstance(targets, str | list) or not targets:
        raise _incompatible(folder, "target_modules is missing")
    missing = _targets_match(targets, shapes)
    if missing:
        raise _incompatible(folder, f"target modules {missing} do not exist in the base model")
    _check_weights(folder, shapes)
