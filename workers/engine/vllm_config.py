"""What the vLLM backend asks of vLLM, worked out from loraq's settings (pure, no vllm).

Kept apart from the backend so that the mapping of settings, sampling parameters and
finish reasons is plain code, read and tested without vLLM installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from schemas import ErrorType, GenerationParams
from schemas.response_format import JsonObjectFormat, JsonSchemaFormat, RegexFormat, constraint
from workers.adapters.validation import ModuleShape
from workers.engine.grammar import check_size
from workers.engine.logprobs import Step
from workers.engine.requests import EngineError
from workers.settings import WorkerSettings

# The ranks vLLM 0.32 sizes its LoRA buffers for (``vllm.config.lora.MaxLoRARanks``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Modules vLLM's LoRA layers replace in a Llama-like model: the budget of one adapter in
# the host tier is counted over these, at the highest rank allowed.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

FinishReason = Literal["stop", "length", "cancelled"]
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "cancelled"}


def vllm_lora_rank(max_rank: int) -> int:
    """The smallest rank vLLM supports that holds ``max_rank`` (our own cap still applies:
    adapters are validated against ``max_lora_rank`` before vLLM sees them)."""
    for rank in VLLM_LORA_RANKS:
        if rank >= max_rank:
            return rank
    raise EngineError(
        ErrorType.VALIDATION, f"max_lora_rank {max_rank} is over vLLM's {VLLM_LORA_RANKS[-1]}"
    )


def adapter_budget_bytes(shapes: Mapping[str, ModuleShape], rank: int, dtype_bytes: int) -> int:
    """Bytes of the largest adapter the base accepts: rank ``rank`` on every LoRA target."""
    targets = [s for name, s in shapes.items() if name.rsplit(".", 1)[-1] in LORA_TARGETS]
    return sum(rank * (s.in_features + s.out_features) * dtype_bytes for s in targets)


def max_cpu_loras(settings: WorkerSettings, shapes: Mapping[str, ModuleShape]) -> int:
    """How many adapters vLLM keeps in host memory: the host tier (``adapter_host_cache_mb``)
    over the budget of the largest adapter, and never fewer than the device slots.

    vLLM counts its host cache in adapters, loraq in bytes: counting each adapter at the
    largest size allowed keeps vLLM within the bytes.
    """
    dtype_bytes = FLOAT_BYTES.get(settings.dtype, 4)
    budget = adapter_budget_bytes(shapes, settings.max_lora_rank, dtype_bytes)
    fit = settings.adapter_host_cache_mb * 2**20 // budget if budget else 0
    return max(settings.max_adapters_per_replica, int(fit))


def max_model_len(settings: WorkerSettings, max_positions: int | None) -> int:
    """The longest sequence: the longest prompt and every new token, within the model's
    positions whatever ``VLLM_ALLOW_LONG_MAX_MODEL_LEN`` says.

    Past its positions a model's output is garbage, and on vLLM 0.32's CPU build such a
    row also broke *other* jobs: after one job ran to 2048 tokens on the 128-position
    demo model, 3 of every 300 later jobs of that replica came out as padding (token 0,
    empty text), with adapters and without. A longer prompt is refused; new tokens stop
    at the context instead.
    """
    wanted = settings.max_input_tokens + settings.max_new_tokens
    return min(wanted, max_positions) if max_positions else wanted


# KV cache of a vLLM replica on a CPU unless LORAQ_VLLM_KV_CACHE_GB says otherwise: vLLM
# 0.32's CPU worker otherwise reserves gpu_memory_utilization (0.92) of the NUMA node's
# memory and refuses to start when that much is not free, which on a shared 24 GiB machine
# it never is, so the replica restarts in a loop. 2 GiB hold about 45,000 tokens of a
# 135M model in float32, or 4,096 of a 7B one in bfloat16.
CPU_KV_CACHE_GB = 2.0


def kv_cache_bytes(settings: WorkerSettings, *, on_cpu: bool) -> int | None:
    """vLLM's ``kv_cache_memory_bytes`` for a replica; None leaves the size to vLLM (on a
    GPU, its ``gpu_memory_utilization`` share)."""
    gib = settings.vllm_kv_cache_gb
    if gib is None:
        gib = CPU_KV_CACHE_GB if on_cpu else None
    return None if gib is None else int(gib * 2**30)


def engine_kwargs(
    settings: WorkerSettings,
    shapes: Mapping[str, ModuleShape],
    *,
    max_positions: int | None,
    on_cpu: bool,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.AsyncEngineArgs`` for a replica of ``settings``."""
    if settings.quantization != "none":
        raise EngineError(
            ErrorType.VALIDATION,
            "LORAQ_QUANTIZATION is bitsandbytes on the HF engine; with LORAQ_ENGINE=vllm "
            "serve a pre-quantized checkpoint (AWQ, GPTQ, FP8: vLLM reads it from its config)",
        )
    return {
        "model": settings.model,
        "tokenizer": settings.model,
        "dtype": settings.dtype,
        "trust_remote_code": settings.trust_remote_code,
        "enable_lora": True,
        # The device slots: vLLM's scheduler runs at most this many adapters per step.
        "max_loras": settings.max_adapters_per_replica,
        "max_lora_rank": vllm_lora_rank(settings.max_lora_rank),
        "max_cpu_loras": max_cpu_loras(settings, shapes),
        "max_num_seqs": settings.max_batch_size,
        "max_model_len": max_model_len(settings, max_positions),
        # CUDA graphs are the GPU's gain; on a CPU there is nothing to capture.
        "enforce_eager": on_cpu,
        # Our counters come from the outputs; vLLM's periodic stat log lines are noise.
        "disable_log_stats": True,
        "kv_cache_memory_bytes": kv_cache_bytes(settings, on_cpu=on_cpu),
        # response_format: the HF engine's grammar library, compact JSON as it writes it
        # (the backend makes vLLM's config object of it).
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }


def sampling_kwargs(params: GenerationParams) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one job's ``params``.

    Both sides mean the same by these: temperature 0 is greedy, top_k 0 is off, stop
    strings end the text before them; vLLM draws a seeded row from its own generator, so
    the row does not depend on its batch. The penalties and ``min_p`` are vLLM's own (the
    HF engine applies them as vLLM does); ``logprobs`` is how many alternatives vLLM
    returns beside the generated token (0: that token only), from the model's own scores
    (vLLM's default ``raw_logprobs``, as the HF engine).
    """
    return {
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p or 0.0,
        "presence_penalty": params.presence_penalty or 0.0,
        "frequency_penalty": params.frequency_penalty or 0.0,
        "repetition_penalty": params.repetition_penalty or 1.0,
        "seed": params.seed,
        "stop": list(params.stop),
        "logprobs": (params.top_logprobs or 0) if params.logprobs else None,
    }


def structured_outputs_kwargs(fmt: object, max_bytes: int) -> dict[str, Any] | None:
    """Keyword arguments of vLLM's ``StructuredOutputsParams`` for a job's
    ``response_format`` (``None``: free text); ``validation`` past the byte cap.

    vLLM compiles them with xgrammar, as the HF engine does, without free whitespace (a
    model that keeps emitting spaces would never end: :func:`engine_kwargs`).
    """
    found = constraint(fmt)
    if found is None:
        return None
    check_size(found, max_bytes)
    kwargs: dict[str, Any] = {}
    if isinstance(found, JsonObjectFormat):
        kwargs["json_object"] = True
    elif isinstance(found, JsonSchemaFormat):
        kwargs["json"] = found.json_schema.schema_
    elif isinstance(found, RegexFormat):
        kwargs["regex"] = found.pattern
    else:
        kwargs["choice"] = list(found.choices)
    return kwargs


def logprob_steps(
    token_ids: Sequence[int], positions: Iterable[Mapping[int, Any] | None], top: int
) -> list[Step]:
    """vLLM's log-probabilities of a row (per position, ``{token id: Logprob}``: the
    generated token and the ``top`` likeliest, each with its rank) as the steps
    :func:`workers.engine.logprobs.token_logprobs` reads."""
    steps: list[Step] = []
    for token, position in zip(token_ids, positions, strict=True):
        entries = dict(position or {})
        likeliest = sorted(
            (item for item in entries.items() if item[1].rank is not None and item[1].rank <= top),
            key=lambda item: item[1].rank,
        )
        steps.append(
            (
                float(entries[token].logprob),
                [token_id for token_id, _ in likeliest],
                [float(value.logprob) for _, value in likeliest],
            )
        )
    return steps


def finish_reason(reason: str | None) -> FinishReason:
    """Ours for vLLM's ``finish_reason`` (``abort``: the row was cancelled)."""
    if reason is None or reason not in _FINISH:
        raise EngineError(ErrorType.INTERNAL, f"vLLM ended a row with {reason!r}")
    return _FINISH[reason]


@dataclass
class VllmCounters:
    """What the vLLM backend counts itself (vLLM's scheduler does not report passes)."""

    rows: int = 0
    tokens_generated: int = 0
    rows_in_flight: int = 0
    adapter_loads: int = 0
    adapter_load_failures: int = 0
    adapter_load_ms_total: float = 0.0
    adapters_removed: int = 0
