"""Random Llamas of real sizes and rank-16 adapters, built by code on the device, for
``bench/gpu.py``.

Nothing is downloaded: the weights are random (speed does not depend on them), the
adapters are written as real PEFT folders (``adapter_config.json`` by PEFT's own
``LoraConfig``, ``adapter_model.safetensors`` under PEFT's keys), so the engine reads them
through its real tiers and PEFT loads them for the one-at-a-time pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from workers.engine.synthetic import build_char_tokenizer

HBM_BYTES_PER_S = 4.8e12  # the H200's memory bandwidth, the floor of a decode step
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama (the public configs of the models named)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool


SHAPES = {
    "1b": ModelShape(2048, 8192, 16, 32, 8, 128256, True),  # Llama 3.2 1B
    "8b": ModelShape(4096, 14336, 32, 32, 8, 128256, False),  # Llama 3.1 8B
    "smoke": ModelShape(64, 128, 2, 4, 2, 512, False),  # seconds on a CPU
}


def build_model(
    shape: ModelShape, *, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> PreTrainedModel:
    """A random ``LlamaForCausalLM`` made directly on ``device`` in ``dtype``, in eval mode.

    The end-of-sequence row of the output layer is zeroed: its logit is then 0 among
    ~vocab random ones, never the argmax, so every greedy row runs its full length.
    """
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    # Made on the device: an 8B model never passes through host memory.
    with device:
        model: PreTrainedModel = LlamaForCausalLM._from_config(  # type: ignore[no-untyped-call]
            config, dtype=dtype
        )
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.eval()  # type: ignore[no-untyped-call]
    return model


def streamed_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights a decode step reads: every parameter once (a tied output layer
    counted once), less an untied input embedding, of which a step reads only its rows.
    4-bit weights count their packed bytes."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    output = model.get_output_embeddings()  # type: ignore[operator]
    if embedding.weight is not output.weight:
        total -= embedding.weight.numel() * embedding.weight.element_size()
    return int(total)


def floor_ms(weight_bytes: int) -> float:
    """The memory-bandwidth floor of one decode step: the weights read once, in ms."""
    return weight_bytes / HBM_BYTES_PER_S * 1000


def target_shapes(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear module whose last name is in ``targets``."""
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


def write_adapters(
    model: nn.Module,
    root: Path,
    *,
    count: int,
    rank: int,
    dtype: torch.dtype,
    seed: int = 100,
    targets: Sequence[str] = TARGETS,
    start: int = 0,
) -> list[str]:
    """``count`` random LoRA adapters of ``rank`` on ``targets`` (q/k/v/o unless told), as
    PEFT folders ``root/ad{start}..``; returns their names. The random draws run on the
    model's device."""
    device = next(model.parameters()).device
    shapes = target_shapes(model, targets)
    indices = range(start, start + count)
    names = [f"ad{index:02d}" for index in indices]
    for index, name in zip(indices, names, strict=True):
        torch.manual_seed(seed + index)
        tensors = {}
        for module, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.{module}"
            # A like PEFT's Kaiming init; B small and non-zero, so each adapter changes
            # the output a little (a zero B would add nothing, as PEFT's default init).
            a = torch.randn(rank, fan_in, device=device) / fan_in**0.5  # [r, in]
            b = torch.randn(fan_out, rank, device=device) * 0.01  # [out, r]
            tensors[f"{key}.lora_A.weight"] = a.to(dtype).cpu()
            tensors[f"{key}.lora_B.weight"] = b.to(dtype).cpu()
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=list(targets), task_type="CAUSAL_LM"
        )
        config.save_pretrained(str(folder))
    return names
