"""What the vLLM backend asks of vLLM, from loraq's settings (pure: no vllm needed)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from schemas import ErrorType, GenerationParams
from workers.adapters.validation import ModuleShape
from workers.engine.requests import EngineError
from workers.engine.vllm_config import (
    engine_kwargs,
    finish_reason,
    logprob_steps,
    max_cpu_loras,
    max_model_len,
    sampling_kwargs,
    vllm_lora_rank,
)
from workers.settings import WorkerSettings

SHAPES = {
    f"model.layers.{i}.self_attn.{m}": ModuleShape(64, 64)
    for i in range(2)
    for m in ("q_proj", "v_proj")
} | {"lm_head": ModuleShape(64, 100)}


def test_ranks_round_up_to_what_vllm_sizes_buffers_for() -> None:
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 12, 64, 65)] == [1, 8, 8, 16, 64, 128]
    with pytest.raises(EngineError):
        vllm_lora_rank(1000)


def test_host_tier_in_adapters_is_bytes_over_the_largest_adapter_and_at_least_the_slots() -> None:
    # 4 targets x rank 8 x (64 + 64) x 4 bytes = 16 KiB per adapter; 1 MiB holds 64.
    settings = WorkerSettings(max_lora_rank=8, adapter_host_cache_mb=1, dtype="float32")
    assert max_cpu_loras(settings, SHAPES) == 64
    none = settings.model_copy(update={"adapter_host_cache_mb": 0})
    assert max_cpu_loras(none, SHAPES) == settings.max_adapters_per_replica


def test_context_is_prompt_plus_new_tokens_within_the_models_positions() -> None:
    settings = WorkerSettings(max_input_tokens=100, max_new_tokens=50)
    assert max_model_len(settings, 128) == 128
    assert max_model_len(settings, 4096) == 150
    assert max_model_len(settings, None) == 150


def test_engine_arguments_map_the_slots_and_refuse_bitsandbytes() -> None:
    settings = WorkerSettings(max_adapters_per_replica=3, max_batch_size=7, max_lora_rank=12)
    kwargs = engine_kwargs(settings, SHAPES, max_positions=None, on_cpu=True)
    assert kwargs["enable_lora"] and kwargs["max_loras"] == 3 and kwargs["max_num_seqs"] == 7
    assert kwargs["max_lora_rank"] == 16 and kwargs["enforce_eager"]
    assert kwargs["max_cpu_loras"] >= 3
    # vLLM's own CPU default (92 % of the node) never starts on a shared machine.
    assert kwargs["kv_cache_memory_bytes"] == 2 * 2**30
    assert (
        engine_kwargs(settings, SHAPES, max_positions=None, on_cpu=False)["kv_cache_memory_bytes"]
        is None
    )  # on a GPU: vLLM's share of its memory
    sized = settings.model_copy(update={"vllm_kv_cache_gb": 0.5})
    for on_cpu in (True, False):
        kwargs = engine_kwargs(sized, SHAPES, max_positions=None, on_cpu=on_cpu)
        assert kwargs["kv_cache_memory_bytes"] == 2**29
    with pytest.raises(EngineError) as caught:
        engine_kwargs(
            settings.model_copy(update={"quantization": "4bit"}),
            SHAPES,
            max_positions=None,
            on_cpu=True,
        )
    assert caught.value.type is ErrorType.VALIDATION


def test_sampling_and_finish_reasons() -> None:
    params = GenerationParams(
        max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=5, seed=3, stop=["x"]
    )
    assert sampling_kwargs(params) == {
        "max_tokens": 9,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 3,
        "stop": ["x"],
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "logprobs": None,
    }
    surface = GenerationParams(
        presence_penalty=0.5,
        frequency_penalty=-1.0,
        repetition_penalty=1.2,
        min_p=0.1,
        logprobs=True,
        top_logprobs=3,
    )
    assert sampling_kwargs(surface) | {"max_tokens": 0} == sampling_kwargs(params) | {
        "max_tokens": 0,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "seed": None,
        "stop": [],
        "presence_penalty": 0.5,
        "frequency_penalty": -1.0,
        "repetition_penalty": 1.2,
        "min_p": 0.1,
        "logprobs": 3,
    }
    assert sampling_kwargs(GenerationParams(logprobs=True))["logprobs"] == 0
    assert [finish_reason(r) for r in ("stop", "length", "abort")] == [
        "stop",
        "length",
        "cancelled",
    ]
    with pytest.raises(EngineError):
        finish_reason(None)


@dataclass
class _Logprob:  # vLLM's Logprob: a value and a rank (1 = the likeliest)
    logprob: float
    rank: int


def test_vllms_logprobs_become_steps_best_first() -> None:
    positions = [
        # The sampled token (7) outside the top 2: listed first by vLLM, not an alternative.
        {7: _Logprob(-3.0, 5), 1: _Logprob(-0.5, 1), 2: _Logprob(-1.0, 2)},
        # The sampled token among them: one entry for both.
        {2: _Logprob(-1.5, 2), 4: _Logprob(-0.2, 1)},
    ]
    assert logprob_steps([7, 2], positions, 2) == [
        (-3.0, [1, 2], [-0.5, -1.0]),
        (-1.5, [4, 2], [-0.2, -1.5]),
    ]
    assert logprob_steps([7], positions[:1], 0) == [(-3.0, [], [])]
