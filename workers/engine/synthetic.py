"""Random-initialised Llama models and LoRA adapters, saved as real checkpoints.

Tests and benchmarks use them as correctness oracles and for sizing: the weights are
random, but they go through the same ``from_pretrained`` and PEFT paths as a real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass(frozen=True)
class LlamaShape:
    """Size of a synthetic Llama."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class LoraSpec:
    """A synthetic adapter: its rank, target modules and the seed of its random weights."""

    rank: int
    target_modules: tuple[str, ...]
    seed: int
    alpha: int | None = None


def build_char_tokenizer(vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII plus newline, with a chat template.

    With ``vocab_size``, filler tokens ``<|tN|>`` complete the vocabulary to that size, so
    that a model of a real vocabulary's width can generate every id and each decodes to
    text (prompts still encode to characters only).
    """
    chars = [chr(code) for code in range(32, 127)] + ["\n"]
    tokens = [*SPECIAL_TOKENS, *chars]
    tokens += [f"<|t{index}|>" for index in range(len(tokens), vocab_size or 0)]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_llama(path: Path, *, shape: LlamaShape | None = None, seed: int = 0) -> Path:
    """Save a random-initialised ``LlamaForCausalLM`` and the char tokenizer under ``path``."""
    shape = shape or LlamaShape()
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        initializer_range=shape.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]  # (transformers 5.19)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_lora(base_path: Path, path: Path, spec: LoraSpec) -> Path:
    """Save a LoRA adapter for the model at ``base_path`` with random non-zero weights.

    ``init_lora_weights=False`` makes B random too; the default zero B would leave the
    base model's output unchanged and prove nothing.
    """
    base = LlamaForCausalLM.from_pretrained(base_path)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha or spec.rank,
        target_modules=list(spec.target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(spec.seed)
    get_peft_model(base, config).save_pretrained(str(path))
    return path
