"""Teacher-forced training of the demo models on (input, output) pairs of a task."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from demo.tasks import ALPHABET, Rule, training_inputs

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainPlan:
    """How long and how hard to train one model (the base or one adapter)."""

    steps: int
    learning_rate: float
    batch_size: int = 64
    warmup_steps: int = 50
    weight_decay: float = 0.0


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, text: str, output: str
) -> tuple[list[int], list[int]]:
    """Token ids of ``<s> text <sep> output </s>`` and labels that score only the answer."""
    prompt_ids: list[int] = tokenizer(text)["input_ids"]
    answer_ids: list[int] = tokenizer(output, add_special_tokens=False)["input_ids"]
    answer_ids.append(tokenizer.eos_token_id)
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: every row starts at position 0, as left-padded inference sees it."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def task_batches(
    tokenizer: PreTrainedTokenizerBase,
    rule: Rule,
    *,
    seed: int,
    batch_size: int,
    alphabets: tuple[str, ...] = (ALPHABET,),
) -> Iterator[dict[str, torch.Tensor]]:
    """An endless, seeded stream of training batches for ``rule`` on inputs from ``alphabets``."""
    inputs = training_inputs(seed, alphabets)
    while True:
        rows = [encode_pair(tokenizer, text, rule(text)) for text in _take(inputs, batch_size)]
        yield collate(rows, tokenizer.pad_token_id)


def train(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    plan: TrainPlan,
    *,
    description: str,
) -> float:
    """Train the trainable parameters by ``plan``; returns the mean loss of the last 50 steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.learning_rate, weight_decay=plan.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(plan))
    model.train()
    recent: list[float] = []
    progress = tqdm(range(plan.steps), desc=description, mininterval=2.0)
    for _ in progress:
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-49:], loss.item()]
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    model.eval()
    return sum(recent) / len(recent)


def _warmup_cosine(plan: TrainPlan) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / plan.warmup_steps
        progress = (step - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _take(items: Iterator[str], count: int) -> list[str]:
    return [next(items) for _ in range(count)]
