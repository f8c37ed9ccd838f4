"""Our own decode loop: left-padded prefill, then one-token steps over a shared KV cache.

Every forward pass carries one adapter name per row, so rows of different adapters share
the pass. Rows join between steps (their prefill runs on its own, then their cache is
merged in) and leave as soon as they finish, so a finished row costs no more compute.

Shapes: ``B`` rows, ``S`` cached positions (left padding included), ``V`` vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workers.engine.detokenize import IncrementalDecoder
from workers.engine.lora_model import MultiLoraModel
from workers.engine.sampling import RowSampler, SamplingPlan
from workers.engine.stopping import TextTracker

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
    cancelled: bool = False  # set from other threads; read between steps
    started: float = field(default_factory=time.perf_counter)

    _decoder: IncrementalDecoder | None = None

    def accept(self, token: int, eos_ids: frozenset[int], tokenizer: Any) -> FinishReason | None:
        """Append ``token``; hand out new text; say why the row ends, if it does.

        Decodes only the tokens since the last text handed out (:mod:`detokenize`).
        """
        self.tokens.append(token)
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


@dataclass
class _State:
    """The tensors of the rows in the batch, row ``i`` of each belonging to ``rows[i]``."""

    rows: list[Row]
    cache: DynamicCache
    attention_mask: torch.Tensor  # [B, S] long, 0 on left padding
    positions: torch.Tensor  # [B] position of the last token of each row
    last_tokens: torch.Tensor  # [B] the token each row feeds at the next step
    plan: SamplingPlan | None = None  # the rows' sampling parameters, built when rows change

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.attention_mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.plan = None
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.positions = self.positions[index]
        self.last_tokens = self.last_tokens[index]
        self._trim_padding()

    def _trim_padding(self) -> None:
        # Columns that are padding for every remaining row cost attention for nothing.
        width = int(self.attention_mask.any(dim=0).long().argmax())
        if width > 0 and is_joinable(self.cache):
            self.attention_mask = self.attention_mask[:, width:]
            for layer, keys, values in _kv_layers(self.cache):
                layer.keys = keys[:, :, width:, :]
                layer.values = values[:, :, width:, :]

    def merge(self, other: _State) -> None:
        """Append ``other``'s rows, left-padding the shorter cache to the longer."""
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        self.attention_mask = torch.cat(
            [_left_pad(self.attention_mask, width), _left_pad(other.attention_mask, width)]
        )
        for (mine, keys, values), (_, other_keys, other_values) in zip(
            _kv_layers(self.cache), _kv_layers(other.cache), strict=True
        ):
            mine.keys = torch.cat([_left_pad(keys, width), _left_pad(other_keys, width)])
            mine.values = torch.cat([_left_pad(values, width), _left_pad(other_values, width)])
        self.rows += other.rows
        self.plan = None
        self.positions = torch.cat([self.positions, other.positions])
        self.last_tokens = torch.cat([self.last_tokens, other.last_tokens])


def is_joinable(cache: DynamicCache) -> bool:
    """Whether rows can join or leave ``cache`` by padding or slicing its sequence axis.

    True for plain full-attention layers; sliding-window and linear-attention layers
    keep state that left padding would corrupt.
    """
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _kv_layers(cache: DynamicCache) -> list[tuple[DynamicLayer, torch.Tensor, torch.Tensor]]:
    """Each layer of a filled full-attention cache with its keys and values
    (``[B, heads, S, head_dim]``)."""
    layers = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or layer.keys is None or layer.values is None:
            raise TypeError("only filled full-attention caches can be merged or trimmed")
        layers.append((layer, layer.keys, layer.values))
    return layers


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence dimension (dim 1 of a mask, dim 2 of keys/values) on the left."""
    seq_dim = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[seq_dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[seq_dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=seq_dim)


class DecodeBatch:
    """The rows being decoded together; all methods run on the model thread."""

    def __init__(
        self,
        model: MultiLoraModel,
        tokenizer: Any,
        *,
        device: torch.device,
        on_pass: Callable[[Sequence[str]], None],
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self._on_pass = on_pass
        self._eos_ids = _eos_ids(tokenizer, model)
        self._pad_id = int(tokenizer.pad_token_id)
        self._state: _State | None = None
        self.joinable = is_joinable(DynamicCache(config=model.config))

    @property
    def rows(self) -> list[Row]:
        """Rows in the batch now."""
        return self._state.rows if self._state is not None else []

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
        fresh = _State(list(rows), cache, mask, position_ids[:, -1], input_ids[:, -1])
        if self._state is None:
            self._state = fresh
        else:
            self._state.merge(fresh)
        self._after_forward(logits, first=len(self.rows) - len(rows))

    def step(self) -> None:
        """Drop cancelled rows, then run one decode step for the rest."""
        state = self._state
        if state is None:
            return
        self._leave(state, {i: "cancelled" for i, row in enumerate(state.rows) if row.cancelled})
        if self._state is None:
            return
        rows = len(state.rows)
        state.attention_mask = torch.cat(
            [state.attention_mask, state.attention_mask.new_ones((rows, 1))], dim=1
        )
        state.positions = state.positions + 1
        logits = self._forward(
            state.rows,
            state.last_tokens[:, None],
            state.attention_mask,
            state.positions[:, None],
            state.cache,
        )
        self._after_forward(logits, first=0)

    def fail_all(self) -> list[Row]:
        """Empty the batch after an internal error and return the rows it held."""
        rows = self.rows
        self._state = None
        return rows

    def _forward(
        self,
        rows: Sequence[Row],
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        adapters = [row.adapter for row in rows]
        self._on_pass(adapters)
        return self._model.last_logits(
            input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            adapter_names=adapters,
        )

    def _after_forward(self, logits: torch.Tensor, first: int) -> None:
        """Sample rows ``first..`` from ``logits`` (one line per such row), drop finished."""
        state = self._state
        assert state is not None
        rows = state.rows[first:]
        plan = state.plan if first == 0 else None
        if plan is None:
            plan = SamplingPlan.build([row.sampler for row in rows], logits.shape[-1], self._device)
            if first == 0:
                state.plan = plan
        tokens = plan.next_tokens(logits)  # [rows - first]
        state.last_tokens[first:] = tokens
        finished: dict[int, FinishReason] = {}
        for offset, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            reason = row.accept(token, self._eos_ids, self._tokenizer)
            if reason is not None:
                finished[first + offset] = reason
        self._leave(state, finished)

    def _leave(self, state: _State, reasons: dict[int, FinishReason]) -> None:
        """Rows at the indices of ``reasons`` leave the batch, each for its reason."""
        if not reasons:
            return
        leaving = [(state.rows[i], reason) for i, reason in reasons.items()]
        keep = [i for i in range(len(state.rows)) if i not in reasons]
        if keep:
            state.select(keep)
        else:
            self._state = None
        for row, reason in leaving:
            row.sink.finish(row, reason)


def _eos_ids(tokenizer: Any, model: MultiLoraModel) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model.base, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(value)
    return frozenset(ids)
