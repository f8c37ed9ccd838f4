"""The preallocated KV cache: rows join and leave without moving the others' cache, and a
decode step does the same work however many tokens the rows already hold."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from engine_kit import Kit
from torch.utils._python_dispatch import TorchDispatchMode

from schemas import GenerationParams
from workers.engine.decode import DecodeBatch, FinishReason, Row
from workers.engine.lora_model import BASE_ADAPTER, MultiLoraModel
from workers.engine.model_loader import load_model
from workers.engine.sampling import RowSampler
from workers.engine.stopping import TextTracker

CPU = torch.device("cpu")


class Ended:
    """A row sink that records how rows ended."""

    def __init__(self) -> None:
        self.reasons: list[FinishReason] = []

    def delta(self, text: str) -> None:
        pass

    def finish(self, row: Row, reason: FinishReason) -> None:
        self.reasons.append(reason)

    def fail(self, row: Row, error: Exception) -> None:
        raise error


class OpCounter(TorchDispatchMode):
    """Counts the aten operators that run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.cat_shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func)] += 1
        result = func(*args, **(kwargs or {}))
        if "cat" in str(func):
            self.cat_shapes.append(tuple(result.shape))
        return result


@pytest.fixture
def batch(kit: Kit) -> DecodeBatch:
    loaded = load_model(kit.settings())
    with torch.no_grad():  # EOS scores 0 among wide random scores: rows run their length
        loaded.model.lm_head.weight[loaded.tokenizer.eos_token_id].zero_()
    model = MultiLoraModel(loaded.model, capacity=2)
    model.add("a", kit.adapters / "a")
    return DecodeBatch(
        model, loaded.tokenizer, device=CPU, on_pass=lambda _: None, max_rows=8, max_length=200
    )


def row(batch: DecodeBatch, prompt: str, adapter: str = BASE_ADAPTER, **params: Any) -> Row:
    tokenizer = batch._tokenizer
    return Row(
        prompt_ids=tokenizer(prompt)["input_ids"],
        adapter=adapter,
        max_new_tokens=100,
        sampler=RowSampler.create(GenerationParams.model_validate(params), CPU),
        sink=Ended(),
        text=TextTracker(),
    )


def written(batch: DecodeBatch, slot: int, columns: int) -> list[torch.Tensor]:
    """Copies of the first ``columns`` keys and values of ``slot`` in every layer."""
    cache = batch.slot_cache
    assert cache is not None
    return [
        tensor[slot, :, :columns].clone()
        for layer in cache.slot_layers()
        for tensor in (layer.keys, layer.values)
        if tensor is not None
    ]


def pointers(batch: DecodeBatch) -> list[int]:
    cache = batch.slot_cache
    assert cache is not None and cache.mask is not None
    layers = cache.slot_layers()
    return [cache.mask.data_ptr()] + [
        t.data_ptr() for layer in layers for t in (layer.keys, layer.values) if t is not None
    ]


def test_rows_join_and_leave_without_moving_the_others(batch: DecodeBatch) -> None:
    first, second = row(batch, "first row"), row(batch, "the second row", "a")
    batch.admit([first, second])
    for _ in range(4):
        batch.step()
    columns = len(second.prompt_ids) + 4  # both rows' columns written so far (left-padded)
    before, storage = [written(batch, s, columns) for s in (0, 1)], pointers(batch)
    joining = row(batch, "a third row joins", "a", temperature=0.8, seed=3)
    batch.admit([joining])  # slot 2
    assert pointers(batch) == storage
    for slot in (0, 1):
        assert all(
            torch.equal(a, b)
            for a, b in zip(before[slot], written(batch, slot, columns), strict=True)
        )
    second.cancelled = True
    batch.step()  # the second row leaves; the first and the third step on
    assert batch.rows == [first, joining] and second.sink.reasons == ["cancelled"]  # type: ignore[attr-defined]
    assert pointers(batch) == storage
    assert all(
        torch.equal(a, b) for a, b in zip(before[0], written(batch, 0, columns), strict=True)
    )
    batch.admit([row(batch, "fills the hole")])  # takes the freed slot 1, nothing moves
    assert pointers(batch) == storage and len(batch) == 3


def test_a_step_does_the_same_work_however_long_the_rows(batch: DecodeBatch) -> None:
    batch.admit(
        [row(batch, "one"), row(batch, "two rows", "a"), row(batch, "x", seed=1, temperature=1.0)]
    )
    counters = []
    for step in range(40):
        if step in (5, 35):
            with OpCounter() as counter:
                batch.step()
            counters.append(counter)
        else:
            batch.step()
    assert len(batch) == 3, "a row ended early; the comparison needs all three"
    assert counters[0].ops == counters[1].ops
    # The only concatenations are rotary embeddings' halves of the new token's query and
    # key ([rows, heads, 1, head_dim]); none of keys, values or masks over the length.
    assert all(shape[-2] == 1 for shape in counters[1].cat_shapes), counters[1].cat_shapes
