"""Adapter configs and weight headers checked against the base model's modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from schemas import ErrorType
from workers.adapters.validation import ModuleShape, validate_adapter
from workers.engine.requests import EngineError

SHAPES = {
    "model.layers.0.self_attn.q_proj": ModuleShape(16, 16),
    "model.layers.0.self_attn.v_proj": ModuleShape(16, 8),
    "model.layers.0.mlp.up_proj": ModuleShape(16, 32),
}
PREFIX = "base_model.model.model.layers.0.self_attn"


def write(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    base = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps({**base, **config}))
    if tensors:
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


GOOD = {
    f"{PREFIX}.q_proj.lora_A.weight": torch.zeros(4, 16),
    f"{PREFIX}.q_proj.lora_B.weight": torch.zeros(16, 4),
    f"{PREFIX}.v_proj.lora_A.weight": torch.zeros(4, 16),
    f"{PREFIX}.v_proj.lora_B.weight": torch.zeros(8, 4),
}


def test_a_matching_adapter_passes(tmp_path: Path) -> None:
    validate_adapter(write(tmp_path / "ok", {}, GOOD), SHAPES, max_rank=8)


def test_a_regex_target_passes(tmp_path: Path) -> None:
    config = {"target_modules": r".*\.(q|v)_proj"}
    validate_adapter(write(tmp_path / "re", config, GOOD), SHAPES, max_rank=8)


@pytest.mark.parametrize(
    ("config", "tensors", "fragment"),
    [
        ({"peft_type": "IA3"}, GOOD, "not 'LORA'"),
        ({"r": 16}, GOOD, "over max_lora_rank"),
        ({"rank_pattern": {"q_proj": 32}}, GOOD, "over max_lora_rank"),
        ({"target_modules": ["q_proj", "wq"]}, GOOD, "do not exist"),
        ({"target_modules": r"nothing\.here"}, GOOD, "do not exist"),
        ({"use_dora": True}, GOOD, "DoRA"),
        ({}, {}, "no adapter_model"),
        (
            {},
            {**GOOD, f"{PREFIX}.v_proj.lora_B.weight": torch.zeros(12, 4)},
            "width 12 != 8",
        ),
        ({}, {f"{PREFIX}.k_proj.lora_A.weight": torch.zeros(4, 16)}, "does not exist"),
    ],
)
def test_incompatible_adapters_are_refused(
    tmp_path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], fragment: str
) -> None:
    with pytest.raises(EngineError) as caught:
        validate_adapter(write(tmp_path / "bad", config, tensors), SHAPES, max_rank=8)
    assert caught.value.type is ErrorType.INCOMPATIBLE_ADAPTER
    assert fragment in caught.value.message


def test_an_unreadable_config_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(EngineError) as caught:
        validate_adapter(folder, SHAPES, max_rank=8)
    assert caught.value.type is ErrorType.INCOMPATIBLE_ADAPTER
