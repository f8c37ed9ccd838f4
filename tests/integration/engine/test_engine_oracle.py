"""Mixed-adapter batches give, row for row, the tokens PEFT's generate gives for one adapter."""

from __future__ import annotations

import asyncio

from engine_kit import Kit, Reference, request, start_engine, stop_engine

from workers.engine.engine import Engine
from workers.engine.requests import GenerationOutput, TextDelta

# (adapter or None for base, prompt, max_new_tokens): mixed adapters, base rows, prompt
# lengths from 1 to 40 characters, different lengths to generate.
ROWS: list[tuple[str | None, str, int]] = [
    ("a", "hello world", 24),
    (None, "hi", 16),
    ("b", "the quick brown fox jumps over", 20),
    ("c", "x", 24),
    ("d", "lorem ipsum dolor", 12),
    ("e", "abc", 24),
    (None, "a much longer prompt than the others, 40c", 10),
    ("a", "zz", 8),
    ("b", "q", 24),
    ("c", "mixed batches work", 18),
]


async def test_every_row_of_a_mixed_batch_matches_peft_alone(
    engine: Engine, reference: Reference
) -> None:
    passes_before = engine.backend_stats().forward_passes
    outputs = await asyncio.gather(*[engine.generate(request(*row)) for row in ROWS])
    for (adapter, prompt, max_new), output in zip(ROWS, outputs, strict=True):
        assert output.token_ids == reference(adapter, prompt, max_new), (adapter, prompt)
        assert output.adapter == adapter
        assert output.completion_tokens == len(output.token_ids) <= max_new
    # Far fewer passes than rows x tokens: the rows really shared them.
    passes = engine.backend_stats().forward_passes - passes_before
    assert passes < sum(max_new for _, _, max_new in ROWS) / 3


def test_the_pytorch_paths_cuda_takes_match_peft_too(kit: Kit, reference: Reference) -> None:
    """With the CPU kernels off, the stacked deltas go through bmm and attention through
    SDPA, as on a GPU."""
    engine = start_engine(kit.settings(cpu_lora_kernel=False, decode_attention=False))
    try:

        async def run() -> list[GenerationOutput]:
            return await asyncio.gather(*[engine.generate(request(*row)) for row in ROWS])

        outputs = asyncio.run(run())
    finally:
        stop_engine(engine)
    for (adapter, prompt, max_new), output in zip(ROWS, outputs, strict=True):
        assert output.token_ids == reference(adapter, prompt, max_new), (adapter, prompt)


async def test_the_oracle_tells_adapters_apart(reference: Reference) -> None:
    """Each adapter changes the tokens, so matching the reference proves the routing."""
    prompt = "the quick brown fox jumps over"
    outputs = {name: tuple(reference(name, prompt, 16)) for name in [None, "a", "b", "c", "d"]}
    assert len(set(outputs.values())) == len(outputs)


async def test_one_forward_pass_held_rows_of_three_adapters(engine: Engine) -> None:
    await asyncio.gather(*[engine.generate(request(*row)) for row in ROWS[:6]])
    recent = engine.recent_passes()
    assert max(len(adapters) for adapters in recent) >= 3
    stats = engine.backend_stats()
    assert stats.multi_adapter_passes >= 1 and stats.max_adapters_in_pass >= 3


async def test_rows_joining_a_running_batch_match_too(engine: Engine, reference: Reference) -> None:
    first = [asyncio.create_task(engine.generate(request(*row))) for row in ROWS[:4]]
    # Wait until the first wave is decoding, then add rows between its steps.
    async for event in engine.stream(request("e", "late arrival", 4)):
        if isinstance(event, TextDelta):
            break
    second = [asyncio.create_task(engine.generate(request(*row))) for row in ROWS[4:]]
    outputs = await asyncio.gather(*first, *second)
    for (adapter, prompt, max_new), output in zip(ROWS, outputs, strict=True):
        assert output.token_ids == reference(adapter, prompt, max_new), (adapter, prompt)


async def test_streamed_deltas_add_up_to_the_output(engine: Engine) -> None:
    deltas: list[str] = []
    final: GenerationOutput | None = None
    async for event in engine.stream(request("c", "stream me", 20)):
        if isinstance(event, TextDelta):
            assert final is None
            deltas.append(event.text)
        else:
            final = event
    assert final is not None
    assert "".join(deltas) == final.text
    assert len(deltas) > 1
