"""Base model settings: dtype, attention implementation, 8-bit and 4-bit bitsandbytes."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import torch
from engine_kit import Kit, Reference, request, start_engine, stop_engine
from peft import PeftModel

from workers.engine import decode_attention
from workers.engine.model_loader import load_model

ROWS: list[tuple[str | None, str, int]] = [
    ("a", "quantized rows", 12),
    ("b", "x", 12),
    (None, "base row here", 12),
    ("c", "ccc", 12),
]


def peft_generate(
    kit: Kit, quantization: str, adapter: str | None, prompt: str, n: int
) -> list[int]:
    """PEFT's generate on its own copy of the base, loaded with the same quantization."""
    loaded = load_model(kit.settings(quantization=quantization))
    model = loaded.model
    if adapter:
        model = PeftModel.from_pretrained(model, str(kit.adapters / adapter)).eval()
    encoded = loaded.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=n, do_sample=False)
    return output[0, encoded["input_ids"].shape[1] :].tolist()


def quantized_tokens(kit: Kit, quantization: str, *, together: bool) -> list[list[int]]:
    engine = start_engine(kit.settings(quantization=quantization))
    try:
        linear = engine._model.base.model.layers[0].mlp.down_proj
        assert type(linear).__name__ == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quantization]

        async def run() -> list[list[int]]:
            if together:
                return await _generate_all(engine)
            return [(await engine.generate(request(*row))).token_ids for row in ROWS]

        return asyncio.run(run())
    finally:
        stop_engine(engine)


def test_4bit_mixed_batches_match_peft_on_the_same_quantized_base(kit: Kit) -> None:
    tokens = quantized_tokens(kit, "4bit", together=True)
    for row, got in zip(ROWS, tokens, strict=True):
        assert got == peft_generate(kit, "4bit", *row), row


def test_8bit_rows_match_peft_on_the_same_quantized_base(kit: Kit) -> None:
    # One row at a time: LLM.int8 picks its fp16 outlier columns over the whole batch,
    # so in a batch a row's numerics depend on its neighbours (as in PEFT's own batched
    # generate); the demo kit's quality test covers 8-bit mixed batches.
    tokens = quantized_tokens(kit, "8bit", together=False)
    for row, got in zip(ROWS, tokens, strict=True):
        assert got == peft_generate(kit, "8bit", *row), row


def test_eager_attention_matches_the_default(kit: Kit, reference: Reference) -> None:
    engine = start_engine(kit.settings(attn_implementation="eager"))
    try:
        assert engine._model.base.config._attn_implementation == "eager"
        outputs = asyncio.run(_generate_all(engine))
    finally:
        stop_engine(engine)
    for row, got in zip(ROWS, outputs, strict=True):
        assert got == reference(*row), row


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the kernel is built by gcc")
def test_decode_attention_runs_on_our_kernel_by_default_and_on_sdpa_when_off(
    kit: Kit, reference: Reference
) -> None:
    for enabled, expected in ((True, decode_attention.NAME), (False, "sdpa")):
        engine = start_engine(kit.settings(decode_attention=enabled))
        try:
            assert engine._model.base.config._attn_implementation == expected
            outputs = asyncio.run(_generate_all(engine))
        finally:
            stop_engine(engine)
        for row, got in zip(ROWS, outputs, strict=True):
            assert got == reference(*row), (enabled, row)


def test_bfloat16_loads_and_generates(kit: Kit) -> None:
    engine = start_engine(kit.settings(dtype="bfloat16", device="cpu"))
    try:
        assert engine._model.base.dtype is torch.bfloat16
        outputs = asyncio.run(_generate_all(engine))
    finally:
        stop_engine(engine)
    assert all(len(tokens) > 0 for tokens in outputs)


async def _generate_all(engine: object) -> list[list[int]]:
    outputs = await asyncio.gather(*[engine.generate(request(*row)) for row in ROWS])  # type: ignore[attr-defined]
    return [output.token_ids for output in outputs]
