"""Penalties, min_p and log-probabilities of the batched sampler, against plain references."""

from __future__ import annotations

import math

import pytest
import torch

from schemas import GenerationParams
from workers.engine.sampling import RowSampler, SamplingPlan

CPU = torch.device("cpu")
VOCAB = 12


def sampler(prompt: tuple[int, ...] = (), **params: object) -> RowSampler:
    return RowSampler.create(GenerationParams.model_validate(params), CPU, prompt)


def penalized(
    logits: list[float], prompt: list[int], generated: list[int], params: dict[str, float]
) -> list[float]:
    """vLLM's penalties, token by token: repetition on prompt and generated tokens, then
    frequency and presence on generated ones."""
    out = []
    for token, score in enumerate(logits):
        count = generated.count(token)
        repetition = params.get("repetition_penalty", 1.0)
        if token in prompt or count:
            score = score / repetition if score > 0 else score * repetition
        score -= params.get("frequency_penalty", 0.0) * count
        score -= params.get("presence_penalty", 0.0) * (count > 0)
        out.append(score)
    return out


def test_penalties_match_the_token_by_token_reference_over_steps_in_a_mixed_batch() -> None:
    rows = [
        ((1, 2, 3), {"repetition_penalty": 1.7}),
        ((4,), {"presence_penalty": 1.5, "frequency_penalty": 0.7}),
        ((), {}),
        ((5, 5, 6), {"repetition_penalty": 0.8, "frequency_penalty": -0.5}),
    ]
    samplers = [sampler(prompt, **params) for prompt, params in rows]
    generated: list[list[int]] = [[] for _ in rows]
    draws = torch.Generator().manual_seed(3)
    for step in range(8):
        logits = torch.randn(len(rows), VOCAB, generator=draws) * 3
        if step == 4:  # rows change: a new plan takes each row's counts over
            samplers = samplers[::-1]
            generated = generated[::-1]
            rows = rows[::-1]
            logits = logits.flip(0)
        plan = SamplingPlan.build(samplers, VOCAB, CPU)
        tokens = plan.next_tokens(logits).tolist()
        for index, ((prompt, params), token) in enumerate(zip(rows, tokens, strict=True)):
            expected = penalized(logits[index].tolist(), list(prompt), generated[index], params)
            assert token == max(range(VOCAB), key=expected.__getitem__), (step, index)
            generated[index].append(token)


def test_min_p_keeps_only_tokens_within_min_p_of_the_best() -> None:
    logits = torch.tensor([[2.0, 1.9, 1.0, 0.0, -1.0, -3.0]])
    probs = torch.softmax(logits[0], -1)
    allowed = {i for i, p in enumerate(probs.tolist()) if p >= 0.3 * probs.max().item()}
    assert allowed == {0, 1, 2}
    row = sampler(temperature=1.0, min_p=0.3, seed=5)
    seen = {SamplingPlan.build([row], 6, CPU).next_tokens(logits).item() for _ in range(300)}
    assert seen == allowed
    free = sampler(temperature=1.0, seed=5)
    assert {
        SamplingPlan.build([free], 6, CPU).next_tokens(logits).item() for _ in range(300)
    } > allowed


@pytest.mark.parametrize("top", [0, 3])
def test_logprobs_are_the_log_softmax_of_the_logits_before_penalties_and_temperature(
    top: int,
) -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2))
    rows = [
        sampler(logprobs=True, top_logprobs=top),
        sampler(),
        sampler((1,), logprobs=True, temperature=1.5, seed=3, repetition_penalty=2.0),
    ]
    plan = SamplingPlan.build(rows, VOCAB, CPU)
    tokens = plan.next_tokens(logits)
    step = plan.logprobs(logits, tokens)
    assert step is not None and step.rows == (0, 2)
    expected = torch.log_softmax(logits, -1)
    for entry, index in enumerate(step.rows):
        assert math.isclose(step.chosen[entry], expected[index, tokens[index]].item(), abs_tol=1e-6)
        best = expected[index].topk(top)
        assert step.top_ids[entry] == best.indices.tolist()
        assert step.top_logprobs[entry] == pytest.approx(best.values.tolist(), abs=1e-6)
    assert SamplingPlan.build([sampler()], VOCAB, CPU).logprobs(logits[:1], tokens[:1]) is None


def test_top_logprobs_need_logprobs() -> None:
    with pytest.raises(ValueError, match="top_logprobs needs logprobs"):
        GenerationParams(top_logprobs=2)
