"""Structured output on the vLLM backend: the same mixed batch as the HF engine's test
(8 adapters, half the rows constrained), mapped onto vLLM's structured outputs."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from schemas import ErrorType, GenerationParams
from tests.integration.engine.structured_kit import (
    ADAPTERS,
    MAX_NEW_TOKENS,
    ROWS,
    build_models,
    check_constrained,
    response_format,
    row_adapter,
    row_params,
    row_prompt,
)
from tests.integration.resolving import Resolving
from tests.integration.vllm.conftest import LoopThread
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest
from workers.engine.vllm_backend import VllmBackend
from workers.settings import WorkerSettings


@pytest.fixture(scope="module")
def structured_backend(
    loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmBackend]:
    base, adapters = build_models(tmp_path_factory.mktemp("vllm-structured"))
    settings = WorkerSettings(
        engine="vllm",
        model=str(base),
        adapter_dir=str(adapters),
        adapters={},
        max_adapters_per_replica=len(ADAPTERS),
        max_lora_rank=16,
        max_batch_size=ROWS,
        max_input_tokens=64,
        max_new_tokens=MAX_NEW_TOKENS,
        max_schema_bytes=8192,
    )

    async def start() -> VllmBackend:
        return Resolving(VllmBackend.from_settings(settings), settings)  # type: ignore[return-value]

    # vLLM's start (its engine core, a first compile of the model) is minutes on two
    # shared cores.
    backend = loop_thread.run(start(), timeout_s=480)
    yield backend
    loop_thread.run(backend.close())
    del backend
    gc.collect()


def row_request(row: int) -> GenerationRequest:
    return GenerationRequest(
        adapter=row_adapter(row), prompt=row_prompt(row), params=row_params(row)
    )


async def run(backend: VllmBackend, rows: list[int]) -> list[GenerationOutput]:
    return await asyncio.gather(*(backend.generate(row_request(r)) for r in rows))


@pytest.mark.timeout(900)
def test_mixed_batch_of_constrained_and_free_rows(
    structured_backend: VllmBackend, loop_thread: LoopThread
) -> None:
    outputs = loop_thread.run(run(structured_backend, list(range(ROWS))), timeout_s=480)
    constrained = [r for r in range(ROWS) if response_format(r) is not None]
    for row in constrained:
        assert outputs[row].finish_reason == "stop", (row, outputs[row].text)
        check_constrained(row, outputs[row].text)
    free = [r for r in range(ROWS) if response_format(r) is None]
    alone = loop_thread.run(run(structured_backend, free), timeout_s=480)
    assert [outputs[r].text for r in free] == [output.text for output in alone]


def test_a_format_vllm_cannot_compile_fails_validation(
    structured_backend: VllmBackend, loop_thread: LoopThread
) -> None:
    for fmt, named in [
        ({"type": "regex", "pattern": "(?=a)b"}, "response_format"),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "big",
                    "schema": {
                        "type": "object",
                        "properties": {f"p{i}": {"type": "integer"} for i in range(400)},
                    },
                },
            },
            "8192",
        ),
    ]:
        request = GenerationRequest(
            adapter=None,
            prompt="p",
            params=GenerationParams.model_validate({"max_new_tokens": 8, "response_format": fmt}),
        )
        with pytest.raises(EngineError) as caught:
            loop_thread.run(structured_backend.generate(request))
        assert caught.value.type == ErrorType.VALIDATION and named in str(caught.value)
