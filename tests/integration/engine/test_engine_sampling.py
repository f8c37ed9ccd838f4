"""Per-row sampling, stop strings, length limits and cancellation inside shared batches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from engine_kit import Kit, Reference, request, start_engine, stop_engine

from workers.engine.engine import Engine
from workers.engine.requests import TextDelta

SAMPLED = {"temperature": 1.0, "top_p": 0.95, "top_k": 40}
LONG = 120


def full_length_prompt(reference: Reference, adapter: str, stem: str) -> str:
    """A prompt whose row runs LONG tokens (no EOS): only a cancel can end it early."""
    candidates = (f"{stem} {i}" for i in range(20))
    return next(p for p in candidates if len(reference(adapter, p, LONG)) == LONG)


@pytest.fixture(scope="module")
def engine(kit: Kit) -> Iterator[Engine]:
    engine = start_engine(kit.settings(max_new_tokens=LONG))
    yield engine
    stop_engine(engine)


async def test_same_seed_same_text_alone_and_in_two_different_batches(engine: Engine) -> None:
    job = request("b", "sample me please", 24, seed=1234, **SAMPLED)
    alone = await engine.generate(job)
    batch_one = await asyncio.gather(
        engine.generate(request("a", "neighbour one", 24, seed=1, **SAMPLED)),
        engine.generate(job),
        engine.generate(request(None, "x", 10)),
    )
    batch_two = await asyncio.gather(
        engine.generate(request("c", "another set of rows entirely", 30, seed=9, **SAMPLED)),
        engine.generate(request("d", "q", 5)),
        engine.generate(request("b", "sample me please", 24, seed=77, **SAMPLED)),
        engine.generate(request("e", "ab", 24, temperature=0.7, seed=5)),
        engine.generate(job),
    )
    assert batch_one[1].text == alone.text == batch_two[4].text
    assert batch_one[1].token_ids == alone.token_ids == batch_two[4].token_ids
    # A different seed samples differently: the seed is what pins the text.
    assert batch_two[2].token_ids != alone.token_ids


async def test_sampling_differs_from_greedy(engine: Engine) -> None:
    greedy = await engine.generate(request("a", "hello", 24))
    sampled = await engine.generate(request("a", "hello", 24, seed=3, temperature=1.5))
    assert sampled.token_ids != greedy.token_ids


async def test_a_stop_string_ends_the_row_before_it(engine: Engine) -> None:
    free = await engine.generate(request("c", "stop test", 30))
    assert len(free.text) > 6
    stop = free.text[4:6]
    stopped = await engine.generate(request("c", "stop test", 30, stop=[stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.find(stop)]
    assert stop not in stopped.text


async def test_each_row_keeps_its_own_length(engine: Engine) -> None:
    outputs = await asyncio.gather(
        *[engine.generate(request("a", "same prompt", n)) for n in (1, 5, 17)]
    )
    for n, output in zip((1, 5, 17), outputs, strict=True):
        assert output.completion_tokens <= n
        if output.finish_reason == "length":
            assert output.completion_tokens == n
    assert outputs[2].token_ids[:5] == outputs[1].token_ids


async def test_cancel_stops_a_row_and_keeps_its_text(engine: Engine, reference: Reference) -> None:
    prompt = full_length_prompt(reference, "d", "cancel me")
    job = request("d", prompt, LONG)
    job.request_id = "cancel-1"
    other = asyncio.create_task(engine.generate(request("e", "keep going", 20)))
    seen = ""
    async for event in engine.stream(job):
        if isinstance(event, TextDelta):
            if not seen:
                assert engine.cancel("cancel-1")
            seen += event.text
        else:
            output = event
    assert output.finish_reason == "cancelled"
    assert output.text.startswith(seen) and output.completion_tokens < LONG
    assert not engine.cancel("cancel-1")  # gone once finished
    assert (await other).finish_reason in {"length", "stop"}


async def test_a_listener_that_walks_away_frees_its_row(
    engine: Engine, reference: Reference
) -> None:
    prompt = full_length_prompt(reference, "a", "abandoned")
    tokens_before = engine.backend_stats().tokens_generated
    events = engine.stream(request("a", prompt, LONG))
    async for _event in events:
        break
    await events.aclose()  # what a dropped HTTP stream or a cancelled task does
    for _ in range(200):
        if engine.backend_stats().rows_in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.backend_stats().rows_in_flight == 0
    assert engine.backend_stats().tokens_generated - tokens_before < LONG


async def test_cancel_as_soon_as_the_request_is_known(engine: Engine) -> None:
    job = request("e", "cancelled early", 48)
    job.request_id = "cancel-early"
    task = asyncio.create_task(engine.generate(job))
    while not engine.cancel("cancel-early"):
        await asyncio.sleep(0)
    output = await task
    assert output.finish_reason == "cancelled"
    assert output.completion_tokens < 48
