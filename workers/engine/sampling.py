"""Next-token choice for a batch of rows: greedy, or temperature / top-k / top-p, on the device.

Every filter runs over all sampled rows at once (one sort, one softmax, one cumulative
sum), each row with its own parameters. A row with a seed draws from its own
``torch.Generator`` (one draw per step, from its own probabilities), so its tokens do not
depend on the other rows of its batch; unseeded rows draw together from torch's default
generator. Each row's filters are a function of its own logits only, so a seeded row gives
the same tokens alone and in any batch.

Shapes: ``B`` rows, ``S`` sampled rows among them, ``V`` vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from schemas import GenerationParams

# A temperature that float32 would round to 0 is raised to its smallest normal: scores
# then reach -inf at worst, never NaN.
TINY = torch.finfo(torch.float32).tiny


@dataclass
class RowSampler:
    """How one row picks its next token."""

    temperature: float
    top_p: float
    top_k: int
    generator: torch.Generator | None  # only for a seeded sampled row

    @classmethod
    def create(cls, params: GenerationParams, device: torch.device) -> RowSampler:
        """A sampler for ``params``; only a seeded sampled row gets its own generator."""
        generator = None
        if params.temperature > 0 and params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        return cls(params.temperature, params.top_p, params.top_k, generator)

    @property
    def greedy(self) -> bool:
        """Whether this row takes the most likely token."""
        return self.temperature <= 0


@dataclass(frozen=True)
class SamplingPlan:
    """The per-row parameters of one set of rows as device tensors, built when rows change."""

    sampled: torch.Tensor | None  # [S] indices of the rows that sample; None: all greedy
    temperature: torch.Tensor  # [S, 1]
    top_k: torch.Tensor  # [S, 1] long, V for "no top-k"
    top_p: torch.Tensor  # [S, 1]
    seeded: tuple[tuple[int, torch.Generator], ...]  # (index among S, the row's generator)
    any_unseeded: bool  # some sampled row has no seed (those draw from torch's default)

    @classmethod
    def build(
        cls, samplers: Sequence[RowSampler], vocab: int, device: torch.device
    ) -> SamplingPlan:
        """The plan for rows with these samplers (row ``i`` has ``samplers[i]``)."""
        rows = [(index, s) for index, s in enumerate(samplers) if not s.greedy]
        seeded = tuple((i, s.generator) for i, (_, s) in enumerate(rows) if s.generator)

        def column(values: list[float] | list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        return cls(
            sampled=torch.tensor([i for i, _ in rows], device=device) if rows else None,
            temperature=column([max(s.temperature, TINY) for _, s in rows], torch.float32),
            top_k=column([s.top_k if 0 < s.top_k < vocab else vocab for _, s in rows], torch.long),
            top_p=column([s.top_p for _, s in rows], torch.float32),
            seeded=seeded,
            any_unseeded=any(s.generator is None for _, s in rows),
        )

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row, ``[B]`` long; ``logits`` is ``[B, V]``."""
        tokens = logits.argmax(dim=-1)  # [B]
        if self.sampled is None:
            return tokens
        probs, order = self._filtered(logits.index_select(0, self.sampled).float())
        # One draw per row as torch.multinomial(probs, 1) makes it (argmax of p / q, q ~
        # Exp(1)): the same tokens for the same generator state, without the two
        # `.item()` checks multinomial runs per call, each a device sync on CUDA.
        noise = torch.empty_like(probs)  # [S, V]
        if self.any_unseeded:
            noise.exponential_()  # every row; the seeded rows are drawn again below
        for index, generator in self.seeded:
            noise[index].exponential_(generator=generator)
        picks = (probs / noise).argmax(dim=-1)  # [S]
        # Draws are positions in each row's sorted order: map them back to token ids.
        tokens[self.sampled] = order.gather(1, picks[:, None])[:, 0]
        return tokens

    def _filtered(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities after temperature, top-k and top-p, in each row's sorted order
        (``[S, V]``), and that order (``[S, V]`` token ids)."""
        # Shifted so that each row's best score is 0; softmax and the filters ignore it.
        scores = (logits - logits.max(dim=-1, keepdim=True).values) / self.temperature
        ordered, order = torch.sort(scores, dim=-1, descending=True)  # [S, V]
        rank = torch.arange(ordered.shape[1], device=logits.device)[None, :]  # [1, V]
        # Top-k keeps ties with the k-th score, as a threshold on scores would.
        kth = ordered.gather(1, self.top_k - 1)  # [S, 1]
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))
        probs = torch.softmax(ordered, dim=-1)
        # A token goes when the tokens before it already reach top_p; the first always
        # stays (also when top_p is below float32's smallest value and rounds to 0).
        drop = ((torch.cumsum(probs, dim=-1) - probs) >= self.top_p) & (rank > 0)
        drop &= self.top_p < 1.0
        return torch.softmax(ordered.masked_fill(drop, float("-inf")), dim=-1), order


def next_tokens(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """The next token of every row, for a one-off set of rows; ``logits`` is ``[rows, V]``."""
    plan = SamplingPlan.build(samplers, logits.shape[-1], logits.device)
    tokens: list[int] = plan.next_tokens(logits).tolist()
    return tokens
