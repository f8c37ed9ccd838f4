"""The adapter cache under pressure: two slots, five adapters, pins that hold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from engine_kit import ADAPTERS, Kit, Reference, request, start_engine, stop_engine

from workers.engine.engine import Engine
from workers.engine.requests import GenerationOutput, TextDelta

LONG = 300


@pytest.fixture(scope="module")
def engine(kit: Kit) -> Iterator[Engine]:
    engine = start_engine(kit.settings(max_adapters_per_replica=2, max_new_tokens=LONG))
    yield engine
    stop_engine(engine)


async def test_round_robin_over_five_adapters_with_two_slots(
    engine: Engine, reference: Reference
) -> None:
    names = list(ADAPTERS)
    assert len(names) == 5
    evictions = engine.backend_stats().cache_evictions
    for _round in range(2):
        for name in names:
            output = await engine.generate(request(name, f"round robin {name}", 10))
            assert output.token_ids == reference(name, f"round robin {name}", 10)
            assert len(engine.loaded_adapters()) <= 2
    assert engine.backend_stats().cache_evictions - evictions >= 8


async def test_concurrent_requests_for_more_adapters_than_slots(
    engine: Engine, reference: Reference
) -> None:
    jobs = [(name, f"crowd {i}", 12) for i in range(3) for name in ADAPTERS]
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(engine.loaded_adapters()))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    outputs = await asyncio.gather(*[engine.generate(request(*job)) for job in jobs])
    watcher.cancel()
    for job, output in zip(jobs, outputs, strict=True):
        assert output.token_ids == reference(*job)
    assert peak <= 2


async def test_concurrent_requests_for_one_cold_adapter_load_it_once(engine: Engine) -> None:
    await engine.ensure_adapter("a")
    await engine.ensure_adapter("b")  # "c" is now cold
    loads = engine.backend_stats().cache_loads
    await asyncio.gather(*[engine.generate(request("c", f"same {i}", 4)) for i in range(6)])
    assert engine.backend_stats().cache_loads == loads + 1


async def test_an_adapter_in_use_is_never_evicted(engine: Engine, reference: Reference) -> None:
    prompt = next(
        p for p in (f"long run {i}" for i in range(20)) if len(reference("a", p, LONG)) == LONG
    )
    long_row = engine.stream(request("a", prompt, LONG))
    first = await anext(long_row)
    assert isinstance(first, TextDelta)
    rest = asyncio.create_task(_drain(long_row))
    evictions = engine.backend_stats().cache_evictions
    # "a" holds one of the two slots while its row runs; b..e take turns in the other.
    for name in ["b", "c", "d", "e", "b"]:
        output = await engine.generate(request(name, f"while a runs {name}", 6))
        assert output.token_ids == reference(name, f"while a runs {name}", 6)
        assert not rest.done(), "the long row ended too early to prove anything"
        assert "a" in engine.loaded_adapters()
    assert engine.backend_stats().cache_evictions - evictions >= 4
    final = await rest
    assert final.token_ids == reference("a", prompt, LONG)


async def _drain(events: object) -> GenerationOutput:
    async for event in events:  # type: ignore[attr-defined]
        if isinstance(event, GenerationOutput):
            return event
    raise AssertionError("no output")
