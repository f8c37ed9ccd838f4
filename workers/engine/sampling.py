"""Next-token choice for a batch of rows: greedy, or temperature / top-k / top-p, on the device.

Every filter runs over all sampled rows at once (one sort, one softmax, one cumulative
sum), each row with its own parameters. A row with a seed draws from its own
``torch.Generator`` (one draw per step, from its own probabilities), so its tokens do not
depend on the other rows of its batch; unseeded rows draw together from torch's default
generator. Each row's filters are a function of its own logits only, so a seeded row gives
the same tokens alone and in any batch.

Before any choice, the rows with penalties (greedy ones too) have them applied as vLLM
does: the repetition penalty to tokens of the prompt or generated, then the frequency and
presence penalties to generated ones, from a ``[P, V]`` table of each row's token counts
kept on the device (one scatter per step). ``min_p`` filters after the temperature,
before top-k and top-p (as vLLM). Log-probabilities are those of the model's own scores
(``log_softmax`` of the logits, before penalties and temperature: vLLM's default).

Shapes: ``B`` rows, ``S`` sampled rows among them, ``P`` rows with penalties, ``L`` rows
asking for log-probabilities, ``K`` the most alternatives one of them asks for, ``V``
vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from schemas import GenerationParams

# A temperature that float32 would round to 0 is raised to its smallest normal: scores
# then reach -inf at worst, never NaN.
TINY = torch.finfo(torch.float32).tiny


@dataclass(eq=False)
class Penalties:
    """A row's penalties and the tokens they look at."""

    presence: float
    frequency: float
    repetition: float
    prompt_ids: Sequence[int]
    # [V] float32: how often each token was generated; from a plan's build on, a row of
    # that plan's table (the table is the storage: the plan's step updates it).
    counts: torch.Tensor | None = None
    in_prompt: torch.Tensor | None = None  # [V] bool

    def table_row(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The counts and prompt mask of this row (zero counts before its first step)."""
        if self.counts is None or self.in_prompt is None:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
            self.in_prompt = torch.zeros(vocab, dtype=torch.bool, device=device)
            ids = torch.tensor(list(self.prompt_ids), dtype=torch.long, device=device)
            self.in_prompt[ids[ids < vocab]] = True
        return self.counts, self.in_prompt


@dataclass
class RowSampler:
    """How one row picks its next token."""

    temperature: float
    top_p: float
    top_k: int
    generator: torch.Generator | None  # only for a seeded sampled row
    min_p: float = 0.0
    penalties: Penalties | None = None  # None: no penalty
    top_logprobs: int | None = None  # None: no log-probabilities; else how many alternatives

    @classmethod
    def create(
        cls, params: GenerationParams, device: torch.device, prompt_ids: Sequence[int] = ()
    ) -> RowSampler:
        """A sampler for ``params`` (``prompt_ids``: for a repetition penalty); only a
        seeded sampled row gets its own generator."""
        generator = None
        if params.temperature > 0 and params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        presence = params.presence_penalty or 0.0
        frequency = params.frequency_penalty or 0.0
        repetition = params.repetition_penalty or 1.0
        penalties = None
        if presence or frequency or repetition != 1.0:
            penalties = Penalties(presence, frequency, repetition, prompt_ids)
        return cls(
            params.temperature,
            params.top_p,
            params.top_k,
            generator,
            min_p=params.min_p or 0.0,
            penalties=penalties,
            top_logprobs=(params.top_logprobs or 0) if params.logprobs else None,
        )

    @property
    def greedy(self) -> bool:
        """Whether this row takes the most likely token."""
        return self.temperature <= 0


@dataclass(frozen=True)
class PenaltyTable:
    """The penalties of the rows that have them, and their token counts, on the device."""

    rows: torch.Tensor  # [P] indices of those rows
    counts: torch.Tensor  # [P, V] float32, each row's generated tokens counted
    in_prompt: torch.Tensor  # [P, V] bool
    presence: torch.Tensor  # [P, 1]
    frequency: torch.Tensor  # [P, 1]
    repetition: torch.Tensor  # [P, 1]

    @classmethod
    def build(
        cls, rows: Sequence[tuple[int, Penalties]], vocab: int, device: torch.device
    ) -> PenaltyTable:
        """The table of ``(index, penalties)`` rows; their counts move into it."""
        tables = [p.table_row(vocab, device) for _, p in rows]
        counts = torch.stack([c for c, _ in tables])
        for index, (_, penalties) in enumerate(rows):
            penalties.counts = counts[index]  # a view: the table's updates are the row's

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        return cls(
            rows=torch.tensor([i for i, _ in rows], device=device),
            counts=counts,
            in_prompt=torch.stack([m for _, m in tables]),
            presence=column([p.presence for _, p in rows]),
            frequency=column([p.frequency for _, p in rows]),
            repetition=column([p.repetition for _, p in rows]),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (``[B, V]``) with the penalties applied, as float32 (a new tensor)."""
        scores = logits.index_select(0, self.rows).float()  # [P, V]
        generated = self.counts > 0
        seen = generated | self.in_prompt
        repeated = torch.where(scores > 0, scores / self.repetition, scores * self.repetition)
        scores = torch.where(seen, repeated, scores)
        scores = scores - self.frequency * self.counts - self.presence * generated
        return logits.float().index_copy(0, self.rows, scores)

    def count(self, tokens: torch.Tensor) -> None:
        """Count each row's new token (``tokens`` is ``[B]``)."""
        picked = tokens.index_select(0, self.rows)  # [P]
        self.counts[torch.arange(len(picked), device=picked.device), picked] += 1


@dataclass(frozen=True)
class StepLogprobs:
    """Log-probabilities of one step, on the host: entry ``j`` is row ``rows[j]``."""

    rows: tuple[int, ...]
    chosen: list[float]  # the log-probability of each row's new token
    top_ids: list[list[int]]  # the K likeliest tokens of each row, best first
    top_logprobs: list[list[float]]


@dataclass(frozen=True)
class SamplingPlan:
    """The per-row parameters of one set of rows as device tensors, built when rows change."""

    sampled: torch.Tensor | None  # [S] indices of the rows that sample; None: all greedy
    temperature: torch.Tensor  # [S, 1]
    top_k: torch.Tensor  # [S, 1] long, V for "no top-k"
    top_p: torch.Tensor  # [S, 1]
    seeded: tuple[tuple[int, torch.Generator], ...]  # (index among S, the row's generator)
    any_unseeded: bool  # some sampled row has no seed (those draw from torch's default)
    log_min_p: torch.Tensor | None = None  # [S, 1] log(min_p); None: no row has one
    penalties: PenaltyTable | None = None
    logprob_rows: tuple[int, ...] = ()  # the rows asking for log-probabilities
    logprob_index: torch.Tensor | None = None  # [L] the same rows, on the device
    top_logprobs: int = 0  # K

    @classmethod
    def build(
        cls, samplers: Sequence[RowSampler], vocab: int, device: torch.device
    ) -> SamplingPlan:
        """The plan for rows with these samplers (row ``i`` has ``samplers[i]``)."""
        rows = [(index, s) for index, s in enumerate(samplers) if not s.greedy]
        seeded = tuple((i, s.generator) for i, (_, s) in enumerate(rows) if s.generator)
        penalized = [(i, s.penalties) for i, s in enumerate(samplers) if s.penalties]
        wants = [(i, s.top_logprobs) for i, s in enumerate(samplers) if s.top_logprobs is not None]

        def column(values: list[float] | list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        log_min_p = None
        if any(s.min_p > 0 for _, s in rows):
            # log(0) is -inf: no token of such a row is below it.
            log_min_p = column(
                [math.log(s.min_p) if s.min_p > 0 else -math.inf for _, s in rows], torch.float32
            )
        return cls(
            sampled=torch.tensor([i for i, _ in rows], device=device) if rows else None,
            temperature=column([max(s.temperature, TINY) for _, s in rows], torch.float32),
            top_k=column([s.top_k if 0 < s.top_k < vocab else vocab for _, s in rows], torch.long),
            top_p=column([s.top_p for _, s in rows], torch.float32),
            seeded=seeded,
            any_unseeded=any(s.generator is None for _, s in rows),
            log_min_p=log_min_p,
            penalties=PenaltyTable.build(penalized, vocab, device) if penalized else None,
            logprob_rows=tuple(i for i, _ in wants),
            logprob_index=torch.tensor([i for i, _ in wants], device=device) if wants else None,
            top_logprobs=min(max((k for _, k in wants), default=0), vocab),
        )

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row, ``[B]`` long; ``logits`` is ``[B, V]``."""
        if self.penalties is not None:
            logits = self.penalties.apply(logits)
        tokens = self._choose(logits)
        if self.penalties is not None:
            self.penalties.count(tokens)
        return tokens

    def logprobs(self, logits: torch.Tensor, tokens: torch.Tensor) -> StepLogprobs | None:
        """The log-probabilities of ``tokens`` (``[B]``, chosen from ``logits`` ``[B, V]``)
        and the likeliest alternatives, for the rows that ask: ``None`` if none does."""
        if self.logprob_index is None:
            return None
        logprobs = torch.log_softmax(logits.index_select(0, self.logprob_index).float(), dim=-1)
        chosen = logprobs.gather(1, tokens.index_select(0, self.logprob_index)[:, None])[:, 0]
        top = logprobs.topk(self.top_logprobs, dim=-1)  # K = 0: empty rows
        return StepLogprobs(
            self.logprob_rows, chosen.tolist(), top.indices.tolist(), top.values.tolist()
        )

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
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
        if self.log_min_p is not None:
            # Scores are log-probabilities up to each row's constant, the best at 0: a
            # token below min_p times the best one scores below log(min_p).
            ordered = ordered.masked_fill(ordered < self.log_min_p, float("-inf"))
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
