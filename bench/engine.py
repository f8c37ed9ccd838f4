"""Mixed-adapter batches against the one-request-at-a-time pattern, and adapter memory.

A random-initialised Llama of about 30M parameters with rank-16 LoRA adapters (random,
non-zero) is built in a temporary folder. All runs happen in this process:

- (a) naive: one request at a time, ``set_adapter`` then PEFT ``generate`` (the seed's way);
- (b) engine: 16 concurrent requests over 8 distinct adapters, mixed in shared passes;
- (c) engine: the same 16-row batch shape, base model only (the ceiling for (b));
- (d) engine: the same 16 requests one at a time (the batching gain apart from the loop);
- (e) engine: as (b), but mixed passes take PEFT's per-row LoRA path, not the stacked one.

Every row generates exactly ``--new-tokens`` tokens (the end-of-sequence token is never
the most likely one in this model), greedy. Memory: resident set size measured for one
base + 20 adapters in one engine against 20 separate PEFT model copies, next to the sum
of parameter bytes. Cold load: ``ensure_adapter`` of an adapter not on the device.

Then the batch shapes of ``--shapes`` (rows x new tokens) on both backends, the HF engine
and vLLM (when installed), on the same model, adapters and weights dtype (``--dtype``;
``--vllm-dtype`` gives vLLM another): mixed, base only, one at a time (see
``bench/engine_backends.py``).

``--models`` runs the shapes on other models too: ``bench`` (the model above) and the
real shapes of :mod:`bench.real_models` (SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B, built
by code with random weights; adapters of rank 16 on q/k/v/o and of rank 8 on every
linear layer, in turn). ``--backends`` picks among ``hf``, ``vllm`` (loraq's vLLM
backend), ``vllm_offline`` (``LLM.generate``) and ``vllm_server`` (vLLM's OpenAI
server); ``--shapes-only`` skips (a)-(e) and the memory figures.

    python -m bench.engine [--new-tokens 32] [--repeats 3] [--shapes 16x32,16x256,64x64]
                           [--dtype float32] [--vllm-dtype auto]
                           [--models bench,smollm2-135m,qwen2.5-0.5b,llama-3.2-1b]
                           [--backends hf,vllm,vllm_offline,vllm_server] [--shapes-only]
                           [--structured]

``--structured`` adds structured output's cost (:mod:`bench.engine_structured`): half the
rows held to JSON schemas against all free, at 16 and 64 rows, and each schema's compile
time (``--shapes '' --shapes-only --structured``: that alone).

Writes bench/results/engine.{json,md,png} (and engine_structured.png).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.engine_backends import (
    BACKENDS,
    backend_lines,
    backend_runs,
    plot_backends,
    target_lines,
)
from bench.engine_shapes import parse_shapes, plot_shapes, shape_lines
from bench.engine_structured import ROWS as STRUCTURED_ROWS
from bench.engine_structured import plot_structured, structured_lines, structured_runs
from bench.local_adapters import resolved, warm
from bench.real_models import REAL_SHAPES, build_real_kit
from bench.report import RESULTS
from schemas import GenerationParams
from workers.adapters.registry import AdapterRegistry
from workers.adapters.resolved import name_of
from workers.engine.engine import Engine
from workers.engine.model_loader import load_model
from workers.engine.requests import GenerationRequest
from workers.engine.synthetic import LlamaShape, LoraSpec, build_llama, build_lora
from workers.settings import WorkerSettings

SHAPE = LlamaShape(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=9,
    num_attention_heads=8,
    num_key_value_heads=8,
    initializer_range=0.05,
)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANK = 16
BATCH_ADAPTERS = 8
BATCH_ROWS = 16
MEMORY_ADAPTERS = 20

transformers.utils.logging.disable_progress_bar()


def build_models(root: Path) -> tuple[Path, Path]:
    """The base model and MEMORY_ADAPTERS adapters under ``root``."""
    base = build_llama(root / "base", shape=SHAPE, seed=0)
    model = AutoModelForCausalLM.from_pretrained(base)
    eos = model.config.eos_token_id
    with torch.no_grad():
        # A zero output row gives EOS a logit of 0 among ~100 random ones: never the argmax.
        model.lm_head.weight[eos].zero_()
    model.save_pretrained(base)
    for index in range(MEMORY_ADAPTERS):
        spec = LoraSpec(rank=RANK, target_modules=TARGETS, seed=100 + index)
        build_lora(base, root / "adapters" / f"ad{index:02d}", spec)
    return base, root / "adapters"


def workload() -> list[tuple[str, str]]:
    """16 rows over 8 adapters: (adapter, prompt), prompts of 14-20 characters."""
    return [
        (f"ad{row % BATCH_ADAPTERS:02d}", f"request number {row:02d}" + "x" * (row % 5))
        for row in range(BATCH_ROWS)
    ]


Run = Callable[[], tuple[int, float]]  # one run: (tokens generated, seconds)


def interleaved(runs: dict[str, Run], repeats: int) -> dict[str, dict[str, float]]:
    """Each run ``repeats`` times, in turns, so that load from neighbours hits all alike.

    Reports tokens/s of each run's fastest repeat (the least disturbed) and the median.
    """
    rates: dict[str, list[float]] = {key: [] for key in runs}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for key, run in runs.items():
            tokens[key], seconds = run()
            rates[key].append(tokens[key] / seconds)
    return {
        key: {
            "tokens": tokens[key],
            "tokens_per_s": max(rates[key]),
            "median_tokens_per_s": statistics.median(rates[key]),
            "runs_tokens_per_s": rates[key],
        }
        for key in runs
    }


def paired_ratio(results: dict[str, Any], top: str, bottom: str) -> float:
    """Median over repeats of top/bottom within one turn (the runs closest in time)."""
    pairs = zip(
        results[top]["runs_tokens_per_s"], results[bottom]["runs_tokens_per_s"], strict=True
    )
    return statistics.median(t / b for t, b in pairs)


def naive(base: Path, adapters: Path, new_tokens: int) -> Run:
    """(a) One request at a time: ``set_adapter`` + ``generate`` on one PEFT model."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    names = sorted({name for name, _ in workload()})
    peft = PeftModel.from_pretrained(model, str(adapters / names[0]), adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(str(adapters / name), adapter_name=name)
    peft.eval()

    def run() -> tuple[int, float]:
        tokens, started = 0, time.perf_counter()
        for name, prompt in workload():
            peft.set_adapter(name)
            encoded = tokenizer(prompt, return_tensors="pt")
            with torch.inference_mode():
                output = peft.generate(**encoded, max_new_tokens=new_tokens, do_sample=False)
            tokens += output.shape[1] - encoded["input_ids"].shape[1]
        return tokens, time.perf_counter() - started

    return run


def engine_settings(base: Path, adapters: Path, **extra: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "model": str(base),
        "adapter_dir": str(adapters),
        "adapters": {},
        "max_batch_size": BATCH_ROWS,
        "batch_wait_ms": 20,
        "max_adapters_per_replica": MEMORY_ADAPTERS,
    }
    return WorkerSettings.model_validate({**values, **extra})


def engine_runs(engine: Engine, peft_engine: Engine, new_tokens: int) -> dict[str, Run]:
    """(b), (c) and (d) on one engine, (e) on ``peft_engine`` (its adapters loaded
    through PEFT); the batch's adapters are made warm first on both."""
    params = GenerationParams(max_new_tokens=new_tokens)
    folder = engine_folder(engine)
    mixed = [
        GenerationRequest(adapter=a, prompt=p, params=params, resolved=resolved(folder, a))
        for a, p in workload()
    ]
    base_only = [GenerationRequest(adapter=None, prompt=p, params=params) for _, p in workload()]

    async def together(requests: list[GenerationRequest]) -> tuple[int, float]:
        started = time.perf_counter()
        outputs = await asyncio.gather(*[engine.generate(r) for r in requests])
        return sum(o.completion_tokens for o in outputs), time.perf_counter() - started

    async def one_by_one(requests: list[GenerationRequest]) -> tuple[int, float]:
        started = time.perf_counter()
        outputs = [await engine.generate(r) for r in requests]
        return sum(o.completion_tokens for o in outputs), time.perf_counter() - started

    async def peft_per_row(requests: list[GenerationRequest]) -> tuple[int, float]:
        started = time.perf_counter()
        outputs = await asyncio.gather(*[peft_engine.generate(r) for r in requests])
        return sum(o.completion_tokens for o in outputs), time.perf_counter() - started

    for backend in (engine, peft_engine):
        for name in sorted({a for a, _ in workload()}):
            asyncio.run(backend.ensure_adapter(warm(folder, name)))
    asyncio.run(together(mixed))  # warm-up
    asyncio.run(peft_per_row(mixed))
    return {
        "b_mixed_batch": lambda: asyncio.run(together(mixed)),
        "c_base_batch": lambda: asyncio.run(together(base_only)),
        "d_engine_one_at_a_time": lambda: asyncio.run(one_by_one(mixed)),
        "e_mixed_peft_per_row": lambda: asyncio.run(peft_per_row(mixed)),
    }


def peft_path_engine(settings: WorkerSettings) -> Engine:
    """An engine whose adapters all take PEFT's per-row path (the one the stacked path
    replaces): the choice is made as an adapter is loaded, so it is set before any is.
    The model is reached into on purpose, for this comparison only."""
    engine = Engine(settings, load_model(settings))
    engine._model.add = engine._model.add_peft  # type: ignore[method-assign]
    return engine


def engine_folder(engine: Engine) -> str | None:
    """The adapter folder the bench gave ``engine``."""
    return engine._settings.adapter_dir


def adapter_names(folder: str | Path | None) -> list[str]:
    """The adapters the bench wrote into ``folder``."""
    return AdapterRegistry({}, str(folder) if folder else None).names()


def cold_loads(engine: Engine, count: int) -> dict[str, float]:
    """Time ``ensure_adapter`` for adapters not on the device (validation + load)."""
    folder = engine_folder(engine)
    loaded = {name_of(key) for key in engine.loaded_adapters()}
    cold = [n for n in adapter_names(folder) if n not in loaded][:count]
    times = []
    for name in cold:
        started = time.perf_counter()
        asyncio.run(engine.ensure_adapter(warm(folder, name)))
        times.append((time.perf_counter() - started) * 1000)
    return {"cold_load_ms_median": statistics.median(times), "cold_load_ms_max": max(times)}


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc), after garbage collection and
    glibc's return of freed memory, so that it counts what is live."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def materialize(model: torch.nn.Module) -> torch.nn.Module:
    """Give every weight its own memory, as a copy on a device would have.

    transformers maps safetensors files lazily: without this, untouched weights of a
    copy would cost no resident memory at all and the comparison would mean nothing.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()
    return model


def memory(base: Path, adapters: Path) -> dict[str, float]:
    """1 base + 20 adapters in one engine against 20 separate PEFT model copies."""
    start = rss_bytes()
    settings = engine_settings(base, adapters)
    loaded = load_model(settings)
    materialize(loaded.model)
    engine = Engine(settings, loaded)
    del loaded
    for name in adapter_names(adapters):
        asyncio.run(engine.ensure_adapter(warm(adapters, name)))
    shared_rss = rss_bytes() - start
    assert len(engine.loaded_adapters()) == MEMORY_ADAPTERS
    # The stacked slots are plain tensors, not parameters: the engine counts them.
    adapter_bytes = asyncio.run(engine.adapter_device_bytes())
    base_bytes = parameter_bytes(engine.base_model)
    asyncio.run(engine.close())
    del engine
    start = rss_bytes()
    copies = []
    for name in sorted(p.name for p in adapters.iterdir()):
        model = materialize(AutoModelForCausalLM.from_pretrained(base).eval())
        copies.append(PeftModel.from_pretrained(model, str(adapters / name)).eval())
    copies_rss = rss_bytes() - start
    del copies
    gc.collect()
    mib = 1024 * 1024
    return {
        "shared_rss_mib": shared_rss / mib,
        "copies_rss_mib": copies_rss / mib,
        "rss_ratio": copies_rss / shared_rss,
        "shared_param_mib": (base_bytes + adapter_bytes) / mib,
        "copies_param_mib": MEMORY_ADAPTERS * (base_bytes + adapter_bytes / MEMORY_ADAPTERS) / mib,
        "base_param_mib": base_bytes / mib,
        "adapter_param_mib_each": adapter_bytes / MEMORY_ADAPTERS / mib,
    }


def basics(args: argparse.Namespace, base: Path, adapters: Path) -> dict[str, Any]:
    """(a)-(e), the memory figures and cold loads, on the bench model."""
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
    results: dict[str, Any] = {
        "config": {
            "base_params_millions": params / 1e6,
            "adapter_rank": RANK,
            "adapter_targets": list(TARGETS),
            "rows": BATCH_ROWS,
            "distinct_adapters": BATCH_ADAPTERS,
            "new_tokens_per_row": args.new_tokens,
            "torch_threads": torch.get_num_threads(),
        },
    }
    # First, while nothing else has come and gone: a later run's memory, released
    # under way, once made the resident set shrink while the engine loaded.
    results["memory"] = memory(base, adapters)
    settings = engine_settings(base, adapters)
    engine = Engine(settings, load_model(settings))
    peft_engine = peft_path_engine(settings)
    try:
        runs = {"a_naive_set_adapter": naive(base, adapters, args.new_tokens)}
        runs.update(engine_runs(engine, peft_engine, args.new_tokens))
        before = engine.backend_stats()
        results.update(interleaved(runs, args.repeats))
        after = engine.backend_stats()
        results["b_mixed_batch"]["multi_adapter_passes"] = (
            after.multi_adapter_passes - before.multi_adapter_passes
        )
        results["b_mixed_batch"]["max_adapters_in_pass"] = after.max_adapters_in_pass
        results["cold_load"] = cold_loads(engine, count=5)
    finally:
        asyncio.run(engine.close())
        asyncio.run(peft_engine.close())
    b, a, c, d = "b_mixed_batch", "a_naive_set_adapter", "c_base_batch", "d_engine_one_at_a_time"
    results["ratios"] = {
        "b_over_a": results[b]["tokens_per_s"] / results[a]["tokens_per_s"],
        "b_over_c": results[b]["tokens_per_s"] / results[c]["tokens_per_s"],
        "b_over_d": results[b]["tokens_per_s"] / results[d]["tokens_per_s"],
        "b_over_a_paired": paired_ratio(results, b, a),
        "b_over_c_paired": paired_ratio(results, b, c),
        "e_over_c_paired": paired_ratio(results, "e_mixed_peft_per_row", c),
    }
    return results


def model_kit(root: Path, name: str) -> tuple[Path, Path]:
    """The base model and adapters of ``--models`` entry ``name`` under ``root``."""
    if name == "bench":
        return build_models(root / name)
    return build_real_kit(root / name, REAL_SHAPES[name], adapters=BATCH_ADAPTERS)


def shape_runs(args: argparse.Namespace, base: Path, adapters: Path) -> dict[str, Any]:
    """The ``--shapes`` on every backend of ``--backends`` for one model."""
    with torch.device("meta"):
        config = transformers.AutoConfig.from_pretrained(base)
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    # Every backend with the batch's adapters and rank only: vLLM sizes its LoRA buffers
    # by max_loras x max_lora_rank.
    sized = engine_settings(base, adapters).model_copy(
        update={
            "max_adapters_per_replica": BATCH_ADAPTERS,
            "max_lora_rank": RANK,
            "dtype": args.dtype,
        }
    )
    backends = backend_runs(
        sized,
        parse_shapes(args.shapes),
        adapters=BATCH_ADAPTERS,
        repeats=args.repeats,
        vllm_dtype=args.vllm_dtype or args.dtype,
        backends=tuple(args.backends.split(",")),
    )
    return {"params_millions": params / 1e6, "backends": backends}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results: dict[str, Any] = {}
        if not args.shapes_only:
            results.update(basics(args, *build_models(root / "basics")))
        results["config"] = {
            **results.get("config", {}),
            "backend_dtypes": {"hf": args.dtype, "vllm": args.vllm_dtype or args.dtype},
            "torch_threads": torch.get_num_threads(),
        }
        results["models"] = {}
        if args.shapes:
            for name in args.models.split(","):
                print(f"model {name}", file=sys.stderr, flush=True)
                base, adapters = model_kit(root, name)
                results["models"][name] = shape_runs(args, base, adapters)
                shutil.rmtree(root / name)  # a real shape's kit is gigabytes
                write(results)  # a run cut short keeps the models it finished
        if args.structured:
            print("structured output", file=sys.stderr, flush=True)
            results["structured"] = structured(args, root)
    return results


def structured(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Half the rows constrained against all free (:mod:`bench.engine_structured`), on
    the model of (a)-(e), built here when those did not run."""
    kit = root / "basics"
    base, adapters = (
        (kit / "base", kit / "adapters") if kit.exists() else build_models(root / "structured")
    )
    runs, compile_ms, engine = structured_runs(base, adapters, args.new_tokens)
    try:
        measured = interleaved(runs, args.repeats)
    finally:
        asyncio.run(engine.close())
    ratios = {
        f"half_over_free_{rows}": paired_ratio(measured, f"half_{rows}", f"free_{rows}")
        for rows in STRUCTURED_ROWS
    }
    return {
        "new_tokens": args.new_tokens,
        "runs": measured,
        "ratios": ratios,
        "compile_ms": compile_ms,
    }


LABELS = {
    "a_naive_set_adapter": "(a) one at a time, set_adapter + generate",
    "b_mixed_batch": "(b) engine, 16 rows, 8 adapters mixed",
    "c_base_batch": "(c) engine, 16 rows, base only",
    "d_engine_one_at_a_time": "(d) engine, one request at a time",
    "e_mixed_peft_per_row": "(e) as (b), with PEFT's per-row LoRA path",
}


def basic_lines(results: dict[str, Any]) -> list[str]:
    config, memory_, ratios = results["config"], results["memory"], results["ratios"]
    lines = [
        f"# Engine benchmark: {config['base_params_millions']:.1f}M-parameter Llama, "
        f"rank-{RANK} adapters, {config['new_tokens_per_row']} new tokens per row, "
        f"{config['torch_threads']} torch threads",
        "",
        "| run | tokens | tokens/s (best) | tokens/s (median) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in LABELS.items():
        row = results[key]
        lines.append(
            f"| {label} | {row['tokens']:.0f} | {row['tokens_per_s']:.1f} | "
            f"{row['median_tokens_per_s']:.1f} |"
        )
    lines += [
        "",
        f"- best runs: (b)/(a) = **{ratios['b_over_a']:.2f}x** (target >= 4x); "
        f"(b)/(c) = {ratios['b_over_c']:.2f}; (b)/(d) = {ratios['b_over_d']:.2f}x",
        f"- runs side by side (median of per-turn ratios): (b)/(a) = "
        f"**{ratios['b_over_a_paired']:.2f}x**; (b)/(c) = {ratios['b_over_c_paired']:.2f}; "
        f"(e)/(c) = {ratios['e_over_c_paired']:.2f} (PEFT's per-row path)",
        f"- passes holding more than one adapter in runs (b) and (e): "
        f"{results['b_mixed_batch']['multi_adapter_passes']:.0f}; most adapters in one pass: "
        f"{results['b_mixed_batch']['max_adapters_in_pass']:.0f}",
        f"- cold load of one adapter (validate + PEFT load_adapter): median "
        f"{results['cold_load']['cold_load_ms_median']:.1f} ms, max "
        f"{results['cold_load']['cold_load_ms_max']:.1f} ms",
        "",
        f"| memory, {MEMORY_ADAPTERS} adapters | 1 base + {MEMORY_ADAPTERS} adapters | "
        f"{MEMORY_ADAPTERS} model copies | ratio |",
        "|---|---:|---:|---:|",
        f"| resident set growth, measured (MiB) | {memory_['shared_rss_mib']:.1f} | "
        f"{memory_['copies_rss_mib']:.1f} | {memory_['rss_ratio']:.1f}x |",
        f"| weight bytes, computed (MiB) | {memory_['shared_param_mib']:.1f} | "
        f"{memory_['copies_param_mib']:.1f} | "
        f"{memory_['copies_param_mib'] / memory_['shared_param_mib']:.1f}x |",
        "",
        f"Base parameters {memory_['base_param_mib']:.1f} MiB; one adapter's device slot "
        f"{memory_['adapter_param_mib_each']:.2f} MiB (the stacks of all "
        f"{MEMORY_ADAPTERS} slots, the base slot included, over {MEMORY_ADAPTERS}).",
    ]
    return lines


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(results, indent=2))
    lines = basic_lines(results) if "memory" in results else ["# Engine benchmark: shapes"]
    for name, model in results["models"].items():
        backends = model["backends"]
        lines += [
            "",
            f"## {name} ({model['params_millions']:.1f}M parameters), "
            f"{results['config']['torch_threads']} torch threads",
        ]
        if "hf" in backends:
            lines += shape_lines(backends["hf"], BATCH_ADAPTERS)
            lines += backend_lines(backends, BATCH_ADAPTERS, results["config"]["backend_dtypes"])
            lines += target_lines(backends)
    if "structured" in results:
        lines += structured_lines(results["structured"])
    (RESULTS / "engine.md").write_text("\n".join(lines) + "\n")


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {n: m["backends"] for n, m in results["models"].items() if "hf" in m["backends"]}
    basic = 2 if "memory" in results else 0
    panels = basic + 2 * len(models)
    if not panels:
        return
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    if basic:
        speed, mem = axes[0][0], axes[0][1]
        keys = list(LABELS)
        speed.barh(
            [LABELS[k] for k in keys], [results[k]["tokens_per_s"] for k in keys], color="tab:blue"
        )
        speed.invert_yaxis()
        speed.set_xlabel("generated tokens/s (best run)")
        speed.set_title("throughput")
        memory_ = results["memory"]
        groups = ["RSS measured", "parameters computed"]
        shared = [memory_["shared_rss_mib"], memory_["shared_param_mib"]]
        copies = [memory_["copies_rss_mib"], memory_["copies_param_mib"]]
        x = range(len(groups))
        mem.bar([i - 0.2 for i in x], shared, 0.4, label=f"1 base + {MEMORY_ADAPTERS} adapters")
        mem.bar([i + 0.2 for i in x], copies, 0.4, label=f"{MEMORY_ADAPTERS} model copies")
        mem.set_xticks(list(x), groups)
        mem.set_ylabel("MiB")
        mem.set_title("memory")
        mem.legend()
    for index, (name, backends) in enumerate(models.items()):
        shapes, by_backend = axes[0][basic + 2 * index], axes[0][basic + 2 * index + 1]
        plot_shapes(shapes, backends["hf"])
        plot_backends(by_backend, backends)
        shapes.set_title(f"{name}: HF engine by batch shape")
        by_backend.set_title(f"{name}: backends by batch shape")
    fig.tight_layout()
    fig.savefig(RESULTS / "engine.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--shapes",
        default="16x32,16x256,64x64",
        help="batch shapes ROWSxTOKENS, comma-separated ('' skips them)",
    )
    parser.add_argument(
        "--models",
        default="bench",
        help="models of the shapes runs, comma-separated: bench (the 30.8M Llama above) "
        f"and {', '.join(REAL_SHAPES)}",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"backends of the shapes runs, comma-separated, among {', '.join(BACKENDS)}",
    )
    parser.add_argument(
        "--shapes-only",
        action="store_true",
        help="only the shapes runs: skip (a)-(e), memory and cold loads",
    )
    parser.add_argument(
        "--structured",
        action="store_true",
        help="also half the rows held to JSON schemas against all free, at 16 and 64 rows "
        "(with --shapes '' --shapes-only: that alone)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype of both backends in the shapes runs",
    )
    parser.add_argument(
        "--vllm-dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="vLLM's dtype there instead (auto: bfloat16 for this float32 model on an x86 CPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 by default: on two shared cores, a second OpenMP thread "
        "spins against the neighbours' processes and makes every run several times slower",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = run(args)
    results["bench_seconds"] = time.perf_counter() - started
    write(results)
    if "memory" in results or results["models"]:
        plot(results)
    if "structured" in results:
        plot_structured(results["structured"], RESULTS / "engine_structured.png")
    print((RESULTS / "engine.md").read_text())
    print(f"bench took {results['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()
