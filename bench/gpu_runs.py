"""What ``bench/gpu.py`` measures (its plan) and the timed runs: the engine's batches and
the seed's one-at-a-time.

Every run builds its own model: the engine hooks its stacked LoRA onto the base modules
and may compile the decoder, so a model serves one engine only.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from bench.gpu_models import SHAPES, build_model, write_adapters
from bench.local_adapters import resolved, warm
from schemas import GenerationParams
from workers.engine.engine import Engine
from workers.engine.model_loader import LoadedModel, load_model
from workers.engine.requests import GenerationRequest
from workers.engine.synthetic import build_char_tokenizer
from workers.settings import WorkerSettings

MAX_PROMPT_TOKENS = 32


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    shapes: tuple[str, ...] = ("8b", "1b")
    rows: tuple[int, ...] = (16, 64)
    new_tokens: int = 64
    adapters: int = 32
    rank: int = 16
    repeats: int = 3
    one_at_a_time_requests: int = 4
    quant_shapes: tuple[str, ...] = ("1b",)
    compile_shapes: tuple[str, ...] = ("1b",)
    budget_s: float = 400.0
    smoke: bool = False

    @classmethod
    def for_smoke(cls) -> Plan:
        """A tiny shape, seconds on a CPU; compile only when asked (its own test covers it)."""
        return cls(
            shapes=("smoke",),
            rows=(2, 4),
            new_tokens=6,
            adapters=4,
            rank=8,
            repeats=1,
            one_at_a_time_requests=2,
            quant_shapes=("smoke",),
            compile_shapes=(),
            budget_s=300.0,
            smoke=True,
        )


@dataclass
class Runner:
    """What the runs share: the plan, the device, a scratch folder, the adapters."""

    plan: Plan
    device: torch.device
    dtype: torch.dtype
    root: Path
    sync: Callable[[torch.device], None]
    floor_ms: dict[str, float] = field(default_factory=dict)  # by shape
    adapters: dict[str, list[str]] = field(default_factory=dict)  # by shape
    _spare: dict[str, torch.nn.Module] = field(default_factory=dict)

    def write_adapters(self, shape: str, model: torch.nn.Module) -> None:
        """The shape's adapters, written once; ``model`` is kept for the first run."""
        self.adapters[shape] = write_adapters(
            model,
            self.adapter_dir(shape),
            count=self.plan.adapters,
            rank=self.plan.rank,
            dtype=self.dtype,
        )
        self._spare[shape] = model

    def adapter_dir(self, shape: str) -> Path:
        return self.root / shape / "adapters"

    def model(self, shape: str) -> Any:
        """A fresh bf16 model of ``shape`` on the device (the one built to describe the
        shape, the first time)."""
        spare = self._spare.pop(shape, None)
        if spare is not None:
            return spare
        return build_model(SHAPES[shape], dtype=self.dtype, device=self.device)

    def settings(self, shape: str, **extra: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "model": str(self.root / shape / "base"),
            "adapter_dir": str(self.adapter_dir(shape)),
            "adapters": {},
            "device": self.device.type,
            "dtype": "bfloat16",
            "max_adapters_per_replica": self.plan.adapters,
            "max_lora_rank": self.plan.rank,
            "max_batch_size": max(self.plan.rows),
            # The default window: rows a run submits at once arrive within it (a late one
            # joins a step later), and a shorter run than the widest does not wait it out long.
            "batch_wait_ms": 5,
            "max_input_tokens": MAX_PROMPT_TOKENS,
            "max_new_tokens": self.plan.new_tokens,
        }
        return WorkerSettings.model_validate({**values, **extra})

    def run_row(self, shape: str, variant: str, rows: int, mode: str) -> dict[str, Any]:
        return {
            "shape": shape,
            "variant": variant,
            "rows": rows,
            "mode": mode,
            "floor_ms": self.floor_ms[shape],
        }


def prompt(row: int) -> str:
    """Prompts of 14-20 characters (tokens: the tokenizer is per character)."""
    return f"request number {row:02d}" + "x" * (row % 5)


def requests(runner: Runner, shape: str, rows: int, *, mixed: bool) -> list[GenerationRequest]:
    names = runner.adapters[shape]
    params = GenerationParams(max_new_tokens=runner.plan.new_tokens)
    folder = runner.adapter_dir(shape)
    chosen = [names[row % len(names)] if mixed else None for row in range(rows)]
    return [
        GenerationRequest(
            adapter=name, prompt=prompt(row), params=params, resolved=resolved(folder, name)
        )
        for row, name in enumerate(chosen)
    ]


def load_engine(runner: Runner, shape: str, variant: str) -> Engine:
    """The engine of ``variant`` with every adapter of ``shape`` on the device."""
    if variant == "4bit":
        # The real loading path: a checkpoint on disk, quantized by bitsandbytes as loaded.
        model = runner.model(shape)
        model.save_pretrained(runner.root / shape / "base")
        build_char_tokenizer().save_pretrained(runner.root / shape / "base")
        del model
        settings = runner.settings(shape, quantization="4bit")
        loaded = load_model(settings)
    else:
        settings = runner.settings(shape, compile_decoder=variant == "compile")
        loaded = LoadedModel(runner.model(shape), build_char_tokenizer(), runner.device)
    engine = Engine(settings, loaded)
    for name in runner.adapters[shape]:
        asyncio.run(engine.ensure_adapter(warm(runner.adapter_dir(shape), name)))
    return engine


def timed_batch(runner: Runner, engine: Engine, batch: list[GenerationRequest]) -> dict[str, Any]:
    """One batch of concurrent requests: tokens, seconds, decode steps' median ms."""
    last = engine.model_timeline()
    after = last[-1].seq if last else 0

    async def together() -> int:
        outputs = await asyncio.gather(*[engine.generate(r) for r in batch])
        return sum(output.completion_tokens for output in outputs)

    runner.sync(runner.device)
    started = time.perf_counter()
    tokens = asyncio.run(together())
    runner.sync(runner.device)
    seconds = time.perf_counter() - started
    steps = [i.ms for i in engine.model_timeline() if i.seq > after and i.label == "step"]
    # The median leaves out the steps that also prefilled joining rows.
    return {"tokens": tokens, "seconds": seconds, "step_ms": statistics.median(steps)}


def best_of(results: list[dict[str, Any]], floor: float) -> dict[str, Any]:
    """The fastest repeat (the least disturbed), with every repeat's rate beside it."""
    best = min(results, key=lambda r: r["seconds"])
    return {
        **best,
        "tokens_per_s": best["tokens"] / best["seconds"],
        "step_over_floor": best["step_ms"] / floor,
        "repeats_tokens_per_s": [r["tokens"] / r["seconds"] for r in results],
    }


def engine_runs(runner: Runner, shape: str, variant: str) -> list[dict[str, Any]]:
    """Mixed and base-only batches at every row count of the plan, in turns."""
    started = time.perf_counter()
    engine = load_engine(runner, shape, variant)
    setup_s = time.perf_counter() - started
    # Compiling settles over a few runs (sizes seen twice become dynamic: a recompile).
    warm_ups = 2 if variant == "compile" else 1
    out = []
    try:
        for rows in runner.plan.rows:
            batches = {
                mode: requests(runner, shape, rows, mixed=mode == "mixed")
                for mode in ("mixed", "base")
            }
            warm: dict[str, list[float]] = {mode: [] for mode in batches}
            timed: dict[str, list[dict[str, Any]]] = {mode: [] for mode in batches}
            for turn in range(warm_ups + runner.plan.repeats):
                for mode, batch in batches.items():
                    result = timed_batch(runner, engine, batch)
                    if turn < warm_ups:
                        warm[mode].append(result["seconds"])
                    else:
                        timed[mode].append(result)
            for mode, results in timed.items():
                run = runner.run_row(shape, variant, rows, mode)
                run.update(best_of(results, runner.floor_ms[shape]))
                run.update(warm_up_s=warm[mode], setup_s=setup_s)
                out.append(run)
        stats = engine.backend_stats()
        for run in out:
            run["max_adapters_in_pass"] = stats.max_adapters_in_pass
    finally:
        asyncio.run(engine.close())
    return out


def one_at_a_time_runs(runner: Runner, shape: str) -> list[dict[str, Any]]:
    """The seed's pattern: one PEFT model, ``set_adapter`` then ``generate``, one request
    at a time. Only the adapters its requests use are loaded: PEFT computes the active
    adapter alone, so the others would change nothing but the load time."""
    count = runner.plan.one_at_a_time_requests
    names = runner.adapters[shape][:count]
    folder = runner.adapter_dir(shape)
    model = PeftModel.from_pretrained(
        runner.model(shape), str(folder / names[0]), adapter_name=names[0]
    )
    for name in names[1:]:
        model.load_adapter(str(folder / name), adapter_name=name)
    model.eval()
    tokenizer = build_char_tokenizer()

    def serve(row: int) -> int:
        model.set_adapter(names[row % len(names)])
        encoded = tokenizer(prompt(row), return_tensors="pt").to(runner.device)
        with torch.inference_mode():
            output = model.generate(  # type: ignore[no-untyped-call]
                **encoded, max_new_tokens=runner.plan.new_tokens, do_sample=False
            )
        return int(output.shape[1] - encoded["input_ids"].shape[1])

    serve(0)  # warm-up
    results = []
    for _ in range(runner.plan.repeats):
        runner.sync(runner.device)
        started = time.perf_counter()
        tokens = sum(serve(row) for row in range(count))
        runner.sync(runner.device)
        seconds = time.perf_counter() - started
        # One row per step: a step's time is the request's time over its tokens.
        results.append({"tokens": tokens, "seconds": seconds, "step_ms": seconds * 1000 / tokens})
    run = runner.run_row(shape, "one_at_a_time", 1, "one_at_a_time")
    run.update(best_of(results, runner.floor_ms[shape]))
    return [run]
