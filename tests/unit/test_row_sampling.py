"""Per-row token choice: greedy, seeded sampling, top-k and top-p filters."""

from __future__ import annotations

import torch

from schemas import GenerationParams
from workers.engine.sampling import RowSampler, next_tokens

CPU = torch.device("cpu")


def sampler(**params: object) -> RowSampler:
    return RowSampler.create(GenerationParams.model_validate(params), CPU)


def draw(row: RowSampler, logits: torch.Tensor) -> int:
    """One token for one row of ``logits`` (``[vocab]``)."""
    return next_tokens(logits[None], [row])[0]


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert next_tokens(logits, [sampler(), sampler()]) == [1, 0]


def test_same_seed_same_draws_whatever_the_neighbours() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    alone = [sampler(temperature=1.0, seed=7) for _ in range(1)]
    draws_alone = [next_tokens(logits[1:2], alone)[0] for _ in range(20)]
    mixed = [sampler(), sampler(temperature=1.0, seed=7), sampler(temperature=0.5, seed=1)]
    draws_mixed = [next_tokens(logits, mixed)[1] for _ in range(20)]
    assert draws_alone == draws_mixed
    assert len(set(draws_alone)) > 1  # it does sample


def test_a_batch_of_mixed_parameters_draws_each_row_as_alone() -> None:
    logits = torch.randn(6, 80, generator=torch.Generator().manual_seed(1))
    params = [
        {},
        {"temperature": 0.8, "top_k": 5, "seed": 11},
        {"temperature": 1.3, "top_p": 0.6, "seed": 12},
        {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 13},
        {"temperature": 0.5},
        {"temperature": 2.0, "seed": 14},
    ]
    batch = [sampler(**p) for p in params]
    together = [next_tokens(logits, batch) for _ in range(15)]
    for index in (0, 1, 2, 3, 5):
        alone = sampler(**params[index])
        assert [draw(alone, logits[index]) for _ in range(15)] == [t[index] for t in together]


def test_top_k_keeps_only_the_k_best() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    row = sampler(temperature=2.0, top_k=2, seed=3)
    assert {draw(row, logits) for _ in range(200)} == {3, 4}


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    row = sampler(temperature=1.0, top_p=0.75, seed=3)
    assert {draw(row, logits) for _ in range(300)} == {0, 1}
    # The most likely token always stays, even when it alone is over top_p.
    row = sampler(temperature=1.0, top_p=0.1, seed=3)
    assert {draw(row, logits) for _ in range(50)} == {0}


def test_extreme_temperature_and_top_p_still_give_a_token() -> None:
    # Values a fuzzer sends: denormal temperature and top_p, and a top_k over the vocabulary.
    logits = torch.tensor([1.0, 2.0, 3.0, -1e9])
    for params in ({"temperature": 5e-324}, {"temperature": 1.0, "top_p": 5e-324}):
        assert draw(sampler(**params, seed=1), logits) == 2
    row = sampler(temperature=2.0, top_k=1000, seed=1)
    assert {draw(row, logits) for _ in range(100)} <= {0, 1, 2}
