"""Exact-match evaluation of the demo kit with plain transformers/PEFT ``generate``."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from demo.tasks import ADAPTER_RULES, BASE_RULE, MAX_INPUT_CHARS, Rule

# Every task's output is as long as its input; one more token for </s>, one to spare.
MAX_NEW_TOKENS = MAX_INPUT_CHARS + 2
BASE = "base"
ECHO = BASE_RULE.__name__

# model name ("base" or an adapter) -> task name ("echo" or an adapter's task) -> exact match
AccuracyMatrix = dict[str, dict[str, float]]


def load_kit(
    model_dir: Path, adapters_dir: Path
) -> tuple[PeftModel, PreTrainedTokenizerBase, list[str]]:
    """The base model with every adapter under ``adapters_dir`` loaded, and the tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = sorted(path.name for path in adapters_dir.iterdir() if path.is_dir())
    model = PeftModel.from_pretrained(base, adapters_dir / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters_dir / name, adapter_name=name)
    model.eval()
    return model, tokenizer, names


@torch.inference_mode()
def generate_outputs(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    batch_size: int = 100,
) -> list[str]:
    """Greedy outputs for ``prompts`` (left-padded batches), decoded without special tokens."""
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        generated = model.generate(  # type: ignore[operator]
            **batch,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs


def exact_match(outputs: list[str], prompts: list[str], rule: Rule) -> float:
    """The fraction of ``outputs`` equal to ``rule`` applied to their prompt."""
    hits = sum(output == rule(prompt) for output, prompt in zip(outputs, prompts, strict=True))
    return hits / len(prompts)


def accuracy_matrix(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, names: list[str], prompts: list[str]
) -> AccuracyMatrix:
    """Exact match of the base model and of each adapter in ``names`` on every task."""
    rules = {ECHO: BASE_RULE, **ADAPTER_RULES}
    with model.disable_adapter():
        per_model = {BASE: generate_outputs(model, tokenizer, prompts)}
    for name in names:
        model.set_adapter(name)
        per_model[name] = generate_outputs(model, tokenizer, prompts)
    return {
        model_name: {task: exact_match(outputs, prompts, rule) for task, rule in rules.items()}
        for model_name, outputs in per_model.items()
    }


def format_matrix(matrix: AccuracyMatrix) -> str:
    """A markdown table: one row per model, one column per task, exact match in percent."""
    tasks = list(next(iter(matrix.values())))
    lines = [
        "| model \\ task | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for model_name, row in matrix.items():
        cells = " | ".join(f"{100 * row[task]:.1f}" for task in tasks)
        lines.append(f"| {model_name} | {cells} |")
    return "\n".join(lines)
