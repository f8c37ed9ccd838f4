"""The engine on the bundled demo kit: PEFT's tokens in mixed batches, quality when quantized."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
import torch
from engine_kit import request, start_engine, stop_engine
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from demo.evaluate import MAX_NEW_TOKENS
from demo.tasks import ADAPTER_RULES, expected_output, heldout_inputs
from workers.engine.engine import Engine
from workers.engine.requests import GenerationOutput
from workers.settings import DEMO_DIR, WorkerSettings

ADAPTERS = sorted(ADAPTER_RULES)


def demo_settings(**overrides: object) -> WorkerSettings:
    """The defaults (the demo kit), with room for every demo adapter."""
    values: dict[str, object] = {"max_adapters_per_replica": len(ADAPTERS), "batch_wait_ms": 20}
    return WorkerSettings.model_validate({**values, **overrides})


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = start_engine(demo_settings())
    yield engine
    stop_engine(engine)


def mixed_jobs(inputs: list[str]) -> list[tuple[str | None, str]]:
    """Each input once per adapter and once for the base, interleaved."""
    return [(adapter, text) for text in inputs for adapter in [*ADAPTERS, None]]


async def run_all(engine: Engine, jobs: list[tuple[str | None, str]]) -> list[GenerationOutput]:
    return await asyncio.gather(
        *[engine.generate(request(adapter, text, MAX_NEW_TOKENS)) for adapter, text in jobs]
    )


def test_mixed_batches_match_peft_generate_per_adapter(engine: Engine) -> None:
    inputs = heldout_inputs()[:8]
    jobs = mixed_jobs(inputs)
    outputs = asyncio.run(run_all(engine, jobs))
    assert max(len(adapters) for adapters in engine.recent_passes()) >= 3
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "model")
    by_adapter = itertools.groupby(
        sorted(zip(jobs, outputs, strict=True), key=_adapter_key), _adapter_key
    )
    for adapter_key, group in by_adapter:
        model = AutoModelForCausalLM.from_pretrained(DEMO_DIR / "model").eval()
        if adapter_key:
            model = PeftModel.from_pretrained(model, str(DEMO_DIR / "adapters" / adapter_key))
        for (_, text), output in group:
            encoded = tokenizer(text, return_tensors="pt")
            with torch.inference_mode():
                reference = model.generate(
                    **encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False
                )
            assert output.token_ids == reference[0, encoded["input_ids"].shape[1] :].tolist()


def _adapter_key(item: tuple[tuple[str | None, str], GenerationOutput]) -> str:
    return item[0][0] or ""


def test_outputs_follow_each_adapters_rule(engine: Engine) -> None:
    inputs = heldout_inputs()[:25]
    jobs = mixed_jobs(inputs)
    outputs = asyncio.run(run_all(engine, jobs))
    hits = sum(
        output.text == expected_output(adapter, text)
        for (adapter, text), output in zip(jobs, outputs, strict=True)
    )
    assert hits / len(jobs) >= 0.95


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_adapters_keep_90_percent_exact_match(quantization: str) -> None:
    inputs = heldout_inputs()
    jobs = [(adapter, text) for text in inputs for adapter in ADAPTERS]
    engine = start_engine(demo_settings(quantization=quantization, max_batch_size=32))
    try:
        outputs = asyncio.run(run_all(engine, jobs))
    finally:
        stop_engine(engine)
    for adapter in ADAPTERS:
        pairs = [
            (text, output.text)
            for (name, text), output in zip(jobs, outputs, strict=True)
            if name == adapter
        ]
        rule = ADAPTER_RULES[adapter]
        accuracy = sum(out == rule(text) for text, out in pairs) / len(pairs)
        assert accuracy >= 0.90, (quantization, adapter, accuracy)
