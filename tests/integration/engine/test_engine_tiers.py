"""The adapter tiers on a real engine: disk reads off the model thread, copies into slots,
prefetch that never evicts, removal that waits for the rows using an adapter."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator

import pytest
import torch
from engine_kit import ADAPTERS, Kit, Reference, request, start_engine, stop_engine
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from workers.engine.engine import Engine
from workers.engine.model_thread import TimelineEntry
from workers.engine.requests import GenerationOutput, TextDelta
from workers.engine.synthetic import LoraSpec, build_lora

COLD = 20
LONG = 480


@pytest.fixture(scope="module")
def cold_folders(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Twenty random adapters the engine has never seen, registered statically."""
    root = tmp_path_factory.mktemp("cold")
    targets = [("q_proj", "v_proj"), ("k_proj", "o_proj"), ("gate_proj", "up_proj")]
    return {
        f"cold{i}": str(
            build_lora(
                kit.base, root / f"cold{i}", LoraSpec(4 + i % 5, targets[i % 3], seed=100 + i)
            )
        )
        for i in range(COLD)
    }


@pytest.fixture(scope="module")
def engine(kit: Kit, cold_folders: dict[str, str]) -> Iterator[Engine]:
    engine = start_engine(
        kit.settings(adapters=cold_folders, max_adapters_per_replica=COLD + 4, max_new_tokens=LONG)
    )
    yield engine
    stop_engine(engine)


async def long_rows(
    engine: Engine, reference: Reference, adapters: list[str]
) -> list[asyncio.Task[GenerationOutput]]:
    """Rows of ``adapters`` that are decoding (and will for a while) when this returns."""
    prompts = [
        next(
            p
            for p in (f"{name} keeps going {i}" for i in range(30))
            if len(reference(name, p, LONG)) == LONG
        )
        for name in adapters
    ]
    streams = [
        engine.stream(request(name, prompt, LONG))
        for name, prompt in zip(adapters, prompts, strict=True)
    ]
    for stream in streams:
        assert isinstance(await anext(stream), TextDelta)
    return [asyncio.create_task(_last(stream)) for stream in streams]


async def test_plain_lora_loads_are_copies_and_create_no_peft_module(engine: Engine) -> None:
    for name in ADAPTERS:
        await engine.ensure_adapter(name)
    stats = engine.backend_stats()
    assert engine._model.peft is None
    assert not any(isinstance(m, LoraLayer) for m in engine.base_model.modules())
    assert stats.device_copies >= len(ADAPTERS) and stats.model_thread_disk_reads == 0
    assert stats.host_loads >= len(ADAPTERS) and stats.host_bytes > 0


async def test_twenty_cold_loads_do_not_stall_decoding_rows(
    engine: Engine, reference: Reference, cold_folders: dict[str, str]
) -> None:
    rows = await long_rows(engine, reference, ["a", "b", "c"])
    before = engine.model_timeline()[-1].seq
    reads = engine.backend_stats().model_thread_disk_reads
    await asyncio.gather(*[engine.ensure_adapter(name) for name in cold_folders])
    work = [item for item in engine.model_timeline() if item.seq > before]
    copies = [i for i, item in enumerate(work) if item.label == "copy"]
    assert len(copies) == COLD, [item.label for item in work if item.label != "step"]
    # From the first load asked for to the last copy, the model thread did decode steps
    # and copies, nothing else: every read and parse ran on the loader thread.
    during = work[: copies[-1] + 1]
    assert {item.label for item in during} == {"copy", "step"}
    steps = [item.ms for item in during if item.label == "step"]
    assert steps, "no decode step ran while the loads were under way"
    assert not any(row.done() for row in rows), "the rows ended before the loads: no proof"
    assert engine.backend_stats().model_thread_disk_reads == reads
    print(
        f"\n{COLD} cold loads: {len(steps)} decode steps ran meanwhile; copies took "
        f"{statistics.median(item.ms for item in during if item.label == 'copy'):.3f} ms "
        f"(median), the longest run of commands between two steps "
        f"{max_gap_ms(during):.3f} ms; decode step median {statistics.median(steps):.2f} ms"
    )
    outputs = await asyncio.gather(*rows)
    assert all(len(output.token_ids) == LONG for output in outputs)
    assert engine.backend_stats().in_use_evictions == 0
    for name in list(cold_folders)[:3]:  # the copied weights are the adapter's own
        got = await engine.generate(request(name, "after the burst", 12))
        assert got.token_ids == reference_of(engine, name, "after the burst", 12)


def max_gap_ms(work: list[TimelineEntry]) -> float:
    """The longest time the model thread spent on commands between two decode steps."""
    gaps, gap = [0.0], 0.0
    for item in work:
        gap = 0.0 if item.label == "step" else gap + item.ms
        gaps.append(gap)
    return max(gaps)


def reference_of(engine: Engine, name: str, prompt: str, max_new_tokens: int) -> list[int]:
    """PEFT's greedy ``generate`` for an adapter outside the kit's reference set."""
    folder = engine.resolver.catalogue.local.resolve(name)
    base = AutoModelForCausalLM.from_pretrained(engine.base_model.config._name_or_path).eval()
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    encoded = engine.tokenizer(prompt, return_tensors="pt")  # type: ignore[operator]
    with torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
    tokens: list[int] = output[0, encoded["input_ids"].shape[1] :].tolist()
    return tokens


async def test_prefetch_warms_host_and_free_slots_only_and_never_raises(kit: Kit) -> None:
    engine = start_engine(kit.settings(max_adapters_per_replica=2))
    try:
        await engine.ensure_adapter("a")
        await engine.prefetch(["b", "c", "nope", "../x", "b"])  # returns at once
        await _until(lambda: {"b", "c"} <= set(engine.host_adapters()))
        await _until(lambda: len(engine.loaded_adapters()) == 2)
        await asyncio.sleep(0.1)
        # One free slot: "b" or "c" took it; the other stays on the host only.
        assert "a" in engine.loaded_adapters() and engine.backend_stats().cache_evictions == 0
        host_loads = engine.backend_stats().host_loads
        cold = next(name for name in ("b", "c") if name not in engine.loaded_adapters())
        await engine.generate(request(cold, "warm on the host", 4))
        stats = engine.backend_stats()
        assert stats.host_loads == host_loads and stats.host_hits >= 1
        assert stats.model_thread_disk_reads == 0
    finally:
        await engine.close()


async def test_a_dropped_version_waits_for_its_rows_then_leaves_both_tiers(kit: Kit) -> None:
    late = str(kit.extra / "late")
    engine = start_engine(kit.settings(max_new_tokens=LONG, adapters={"temp": late, "idle": late}))
    try:
        await engine.ensure_adapter("idle")
        idle, temp = await engine.resolve("idle"), await engine.resolve("temp")
        prompt = "dropped while it runs"
        stream = engine.stream(request("temp", prompt, LONG))
        assert isinstance(await anext(stream), TextDelta)
        running = asyncio.create_task(_last(stream))
        assert engine.drop_adapter(temp.key) and engine.drop_adapter(idle.key)
        assert not engine.drop_adapter("a@never-held")
        # Unused: gone at once. In use: stays until its row is done.
        assert "idle" not in engine.loaded_adapters() and "idle" not in engine.host_adapters()
        assert "temp" in engine.loaded_adapters()
        output = await running
        assert output.finish_reason in {"length", "stop"} and output.token_ids
        assert "temp" not in engine.loaded_adapters() and "temp" not in engine.host_adapters()
        stats = engine.backend_stats()
        assert stats.adapters_removed == 2 and stats.in_use_evictions == 0
        assert stats.host_bytes == 0
        again = await engine.generate(request("temp", "back again", 6))  # loads it again
        assert again.token_ids
    finally:
        await engine.close()


async def test_a_zero_host_budget_still_serves_right(kit: Kit, reference: Reference) -> None:
    engine = start_engine(kit.settings(adapter_host_cache_mb=0, max_adapters_per_replica=2))
    try:
        for name in ["a", "b", "c", "a"]:
            output = await engine.generate(request(name, f"no host cache {name}", 8))
            assert output.token_ids == reference(name, f"no host cache {name}", 8)
        stats = engine.backend_stats()
        assert stats.host_bytes == 0 and stats.host_evictions >= 3
    finally:
        await engine.close()


async def _last(stream: object) -> GenerationOutput:
    async for event in stream:  # type: ignore[attr-defined]
        if isinstance(event, GenerationOutput):
            return event
    raise AssertionError("no output")


async def _until(check: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
