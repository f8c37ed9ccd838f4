"""Our own decode loop: left-padded prefill, then one-token steps over a shared KV cache.

Every forward pass carries one adapter name per row, so rows of different adapters share
the pass. Rows join between steps (their prefill runs on its own, then it is copied into
free slots of the preallocated cache, :mod:`kv_slots`) and leave as soon as they finish,
so a finished row costs no more compute and no other row's cache moves. Models whose
cache cannot take rows that way (sliding-window or linear-attention layers) keep a
``DynamicCache`` that grows by concatenation, and rows join only an empty batch.

Shapes: ``B`` rows in a pass, ``S`` cached positions (left padding included), ``V``
vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workers.engine.detokenize import IncrementalDecoder
from workers.engine.grammar import GrammarMasks
from workers.engine.kv_slots import SlotCache
from workers.engine.lora_model import BASE_ADAPTER, MultiLoraModel
from workers.engine.sampling import RowSampler, SamplingPlan, StepLogprobs
from workers.engine.slot_rows import SlotRows
from workers.engine.stopping import TextTracker

if TYPE_CHECKING:
    import xgrammar

FinishReason = Literal["stop", "length", "cancelled"]


class RowSink(Protocol):
    """Receives a row's text as it grows, then its end (called on the model thread)."""

    def delta(self, text: str) -> None:
        """New text of the row."""

    def finish(self, row: Row, reason: FinishReason) -> None:
        """The row has left the batch."""

    def fail(self, row: Row, error: Exception) -> None:
        """The row could not run (an internal error or the engine closing)."""


@dataclass(eq=False)
class Row:
    """One request inside the decode loop."""

    prompt_ids: list[int]
    adapter: str
    max_new_tokens: int
    sampler: RowSampler
    sink: RowSink
    text: TextTracker
    request_id: str | None = None
    tokens: list[int] = field(default_factory=list)
    # Per token, when the sampler asks for them: its log-probability, and the ids and
    # log-probabilities of the likeliest tokens of its step.
    logprobs: list[tuple[float, list[int], list[float]]] = field(default_factory=list)
    cancelled: bool = False  # set from other threads; read between steps
    # The row's response_format, when it has one (:mod:`grammar`): masks its logits.
    grammar: xgrammar.GrammarMatcher | None = None
    started: float = field(default_factory=time.perf_counter)

    _decoder: IncrementalDecoder | None = None

    def accept(self, token: int, eos_ids: frozenset[int], tokenizer: Any) -> FinishReason | None:
        """Append ``token``; hand out new text; say why the row ends, if it does.

        Decodes only the tokens since the last text handed out (:mod:`detokenize`).
        """
        self.tokens.append(token)
        if self.grammar is not None:
            self.grammar.accept_token(token)
        if token in eos_ids:
            return "stop"
        if self._decoder is None:
            self._decoder = IncrementalDecoder(tokenizer, self.tokens)
        delta = self.text.update(self._decoder.step())
        if delta:
            self.sink.delta(delta)
        if self.text.stopped:
            return "stop"
        if len(self.tokens) >= self.max_new_tokens:
            return "length"
        return None

    def flush_text(self) -> str:
        """The row has ended: the text still held back (a half character, a stop's start)."""
        last = self.text.update(self._decoder.flush()) if self._decoder is not None else ""
        return last + self.text.flush()


GREEDY = RowSampler(temperature=0.0, top_p=1.0, top_k=0, generator=None)  # for holes


@dataclass
class _DynamicState:
    """The fallback: rows of one admission over a ``DynamicCache``, row ``i`` of each
    tensor belonging to ``rows[i]``; leaving rows are sliced out."""

    rows: list[Row | None]
    cache: DynamicCache
    attention_mask: torch.Tensor  # [B, S] long, 0 on left padding
    positions: torch.Tensor  # [B] position of the last token of each row
    last_tokens: torch.Tensor  # [B] the token each row feeds at the next step
    plan: SamplingPlan | None = None

    def run(self, forward: Callable[..., torch.Tensor]) -> torch.Tensor:
        rows = len(self.rows)
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones((rows, 1))], dim=1
        )
        self.positions = self.positions + 1
        return forward(
            self.last_tokens[:, None], self.attention_mask, self.positions[:, None], self.cache
        )

    def set_tokens(self, tokens: torch.Tensor) -> None:
        self.last_tokens = tokens

    def leave(self, indices: Sequence[int]) -> None:
        leaving = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in leaving]
        index = torch.tensor(keep, device=self.attention_mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.plan = None
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.positions = self.positions[index]
        self.last_tokens = self.last_tokens[index]


def is_joinable(cache: DynamicCache) -> bool:
    """Whether rows can join or leave ``cache`` through row slots.

    True for plain full-attention layers; sliding-window and linear-attention layers
    keep state that a slot of full columns would not.
    """
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class DecodeBatch:
    """The rows being decoded together; all methods run on the model thread."""

    def __init__(
        self,
        model: MultiLoraModel,
        tokenizer: Any,
        *,
        device: torch.device,
        on_pass: Callable[[Sequence[str]], None],
        max_rows: int,
        max_length: int,
    ) -> None:
        """``max_rows`` rows at once, each of at most ``max_length`` positions."""
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self._on_pass = on_pass
        self._eos_ids = _eos_ids(tokenizer, model)
        self._pad_id = int(tokenizer.pad_token_id)
        self._max_rows = max_rows
        self._masks: GrammarMasks | None = None  # built for the first constrained row
        self.joinable = is_joinable(DynamicCache(config=model.config))
        self._slots: SlotRows[Row] | None = None
        if self.joinable:
            layers = model.config.get_text_config(decoder=True).num_hidden_layers
            cache = SlotCache(layers, slots=max_rows, max_length=max_length)
            self._slots = SlotRows(cache, device)
        self._dynamic: _DynamicState | None = None

    @property
    def rows(self) -> list[Row]:
        """Rows in the batch now."""
        state = self._state
        return [row for row in state.rows if row is not None] if state is not None else []

    @property
    def eos_ids(self) -> frozenset[int]:
        """The tokens that end a row."""
        return self._eos_ids

    @property
    def slot_cache(self) -> SlotCache | None:
        """The preallocated cache (None on the fallback), for inspection only."""
        return self._slots.cache if self._slots is not None else None

    @property
    def _state(self) -> SlotRows[Row] | _DynamicState | None:
        return self._slots if self._slots is not None else self._dynamic

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` in one pass, take their first token and join them to the batch."""
        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[index, width - len(row.prompt_ids) :] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        # Positions count real tokens only, so a left-padded row sees the positions it
        # would see alone.
        position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._model.config)
        logits = self._forward(list(rows), input_ids, mask, position_ids, cache)
        plan = SamplingPlan.build([row.sampler for row in rows], logits.shape[-1], self._device)
        self._constrain(logits, [row.grammar for row in rows])
        tokens = plan.next_tokens(logits)  # [n]
        _record_logprobs(rows, plan.logprobs(logits, tokens))
        if self._slots is not None:
            indices = self._slots.join(rows, cache, mask, position_ids[:, -1] + 1, tokens)
        else:
            assert self._dynamic is None, "rows join a dynamic cache only when it is empty"
            self._dynamic = _DynamicState(list(rows), cache, mask, position_ids[:, -1], tokens)
            indices = list(range(len(rows)))
        self._accept(list(zip(indices, rows, strict=True)), tokens.tolist())

    def step(self) -> None:
        """Drop cancelled rows, then run one decode step for the rest."""
        state = self._state
        if state is None or not self.rows:
            return
        self._leave({i: "cancelled" for i, row in enumerate(state.rows) if row and row.cancelled})
        if not self.rows:
            return
        pass_rows = list(state.rows)
        logits = state.run(
            lambda ids, mask, positions, cache: self._forward(
                pass_rows, ids, mask, positions, cache
            )
        )
        if state.plan is None:
            samplers = [row.sampler if row else GREEDY for row in pass_rows]
            state.plan = SamplingPlan.build(samplers, logits.shape[-1], self._device)
        self._constrain(logits, [row.grammar if row else None for row in pass_rows])
        tokens = state.plan.next_tokens(logits)  # [B]
        _record_logprobs(pass_rows, state.plan.logprobs(logits, tokens))
        state.set_tokens(tokens)
        values = tokens.tolist()
        live = [(i, row) for i, row in enumerate(pass_rows) if row is not None]
        self._accept(live, [values[i] for i, _ in live])

    def fail_all(self) -> list[Row]:
        """Empty the batch after an internal error and return the rows it held."""
        rows = self.rows
        if self._slots is not None and rows:
            self._slots.leave([i for i, row in enumerate(self._slots.rows) if row is not None])
        self._dynamic = None
        return rows

    def _forward(
        self,
        rows: Sequence[Row | None],
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache | SlotCache,
    ) -> torch.Tensor:
        adapters = [row.adapter if row else BASE_ADAPTER for row in rows]
        self._on_pass([name for row, name in zip(rows, adapters, strict=True) if row])
        return self._model.last_logits(
            input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            adapter_names=adapters,
        )

    def _constrain(
        self, logits: torch.Tensor, matchers: Sequence[xgrammar.GrammarMatcher | None]
    ) -> None:
        """Mask the logits of the constrained rows (``matchers[i]`` is row ``i``'s)."""
        if all(matcher is None for matcher in matchers):
            return
        if self._masks is None:
            self._masks = GrammarMasks(self._max_rows, logits.shape[-1])
        self._masks.apply(logits, matchers)

    def _accept(self, rows: list[tuple[int, Row]], tokens: list[int]) -> None:
        """Give each (index, row) its token (``tokens`` in the same order); finished rows
        leave."""
        finished: dict[int, FinishReason] = {}
        for (index, row), token in zip(rows, tokens, strict=True):
            reason = row.accept(token, self._eos_ids, self._tokenizer)
            if reason is not None:
                finished[index] = reason
        self._leave(finished)

    def _leave(self, reasons: dict[int, FinishReason]) -> None:
        """Rows at the indices of ``reasons`` leave the batch, each for its reason."""
        state = self._state
        if not reasons or state is None:
            return
        leaving = [(state.rows[i], reason) for i, reason in reasons.items()]
        if self._dynamic is not None and len(reasons) == len(self._dynamic.rows):
            self._dynamic = None
        else:
            state.leave(list(reasons))
        for row, reason in leaving:
            assert row is not None
            row.sink.finish(row, reason)


def _record_logprobs(rows: Sequence[Row | None], step: StepLogprobs | None) -> None:
    """Hand each row that asked its log-probabilities of this step."""
    if step is None:
        return
    for entry, index in enumerate(step.rows):
        row = rows[index]
        if row is not None:
            wanted = row.sampler.top_logprobs or 0
            alternatives = step.top_ids[entry][:wanted], step.top_logprobs[entry][:wanted]
            row.logprobs.append((step.chosen[entry], *alternatives))


def _eos_ids(tokenizer: Any, model: MultiLoraModel) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model.base, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(value)
    return frozenset(ids)
