"""Models of the shapes users run, built by code (nothing is downloaded), for the CPU benches.

The public configs of SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B (layers, widths, heads,
key/value heads, vocabulary, tied output layer; Qwen2's q/k/v biases through its own
classes), random weights, saved as local Hugging Face folders that both backends load.
The tokenizer is the character tokenizer of :mod:`workers.engine.synthetic`, filled up to
the model's vocabulary, so every id the model can pick decodes to text. The
end-of-sequence row of the output layer is zeroed: its logit is 0 among ~50k-150k random
ones, never the argmax, so every greedy row runs its full length on both backends.

Adapters (PEFT folders written by :func:`bench.gpu_models.write_adapters`) alternate two
kinds: even ones rank 16 on q/k/v/o, odd ones rank 8 on every linear layer of a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from bench.gpu_models import write_adapters
from workers.engine.synthetic import build_char_tokenizer

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = (*ATTENTION, "gate_proj", "up_proj", "down_proj")
# (rank, targets) of even and odd adapters
ADAPTER_KINDS = ((16, ATTENTION), (8, ALL_LINEAR))
MAX_RANK = 16
POSITIONS = 4096


@dataclass(frozen=True)
class RealShape:
    """A model's public config, as far as speed depends on it."""

    family: Literal["llama", "qwen2"]
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    rope_theta: float


REAL_SHAPES = {
    "smollm2-135m": RealShape("llama", 30, 576, 1536, 9, 3, 49152, True, 100000.0),
    "qwen2.5-0.5b": RealShape("qwen2", 24, 896, 4864, 14, 2, 151936, True, 1000000.0),
    "llama-3.2-1b": RealShape("llama", 16, 2048, 8192, 32, 8, 128256, True, 500000.0),
}


def build_real_kit(root: Path, shape: RealShape, *, adapters: int) -> tuple[Path, Path]:
    """A random model of ``shape`` and its tokenizer under ``root/base`` (saved in
    bfloat16: half the disk; the benches load it at the dtype they run), and ``adapters``
    adapters ``ad00``.. under ``root/adapters``, the kinds in turn."""
    tokenizer = build_char_tokenizer(shape.vocab)
    values = {
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": POSITIONS,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": shape.tied,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    torch.manual_seed(0)
    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_class, model_class = classes[shape.family]
    model: PreTrainedModel = model_class._from_config(  # type: ignore[attr-defined]
        config_class(**values), dtype=torch.bfloat16
    )
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()  # tied: the embedding's too
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    for index in range(adapters):
        rank, targets = ADAPTER_KINDS[index % len(ADAPTER_KINDS)]
        write_adapters(
            model,
            root / "adapters",
            count=1,
            rank=rank,
            dtype=torch.float32,
            targets=targets,
            start=index,
        )
    return base, root / "adapters"
