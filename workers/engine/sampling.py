"""Next-token choice per row: greedy, or temperature / top-k / top-p with the row's own RNG.

Each sampled row draws from its own ``torch.Generator`` seeded from the request, and
filters its own logits, so a row's tokens do not depend on the other rows of its batch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from schemas import GenerationParams


@dataclass
class RowSampler:
    """How one row picks its next token."""

    temperature: float
    top_p: float
    top_k: int
    generator: torch.Generator | None

    @classmethod
    def create(cls, params: GenerationParams, device: torch.device) -> RowSampler:
        """A sampler for ``params``; an unseeded sampled row gets a random seed."""
        generator = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            generator = torch.Generator(device=device).manual_seed(seed)
        return cls(params.temperature, params.top_p, params.top_k, generator)

    @property
    def greedy(self) -> bool:
        """Whether this row takes the most likely token."""
        return self.generator is None

    def sample(self, logits: torch.Tensor) -> int:
        """Draw a token from ``logits`` (shape ``[vocab]``)."""
        # Shifted so that the best score is 0, and a temperature that float32 would round to
        # 0 raised to its smallest normal: scores then reach -inf at worst, never NaN.
        # Softmax and the filters ignore the shift.
        logits = logits.float()
        temperature = max(self.temperature, torch.finfo(torch.float32).tiny)
        scores = (logits - logits.max()) / temperature
        if 0 < self.top_k < scores.numel():
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            scores = _top_p_filter(scores, self.top_p)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``."""
    sorted_scores, order = torch.sort(scores, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    # A token goes when the tokens before it already reach top_p; the first always stays.
    drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
    # Also when top_p is below float32's smallest value and rounds to 0.
    drop_sorted[0] = False
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """The next token of every row; ``logits`` is ``[rows, vocab]``."""
    tokens: list[int] = logits.argmax(dim=-1).tolist()
    for index, sampler in enumerate(samplers):
        if not sampler.greedy:
            tokens[index] = sampler.sample(logits[index])
    return tokens
