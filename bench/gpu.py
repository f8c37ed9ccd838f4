"""GPU check of the HF engine: mixed adapters vs base only vs one-at-a-time ``set_adapter``.

Drives :class:`~workers.engine.engine.Engine` directly (no Ray, Redis or HTTP), so it runs
on the lent GPU machine with torch, transformers, peft, safetensors and the few wheels
``bench/gpu.sh`` installs. For each model shape (random Llama of a 1B and an 8B shape,
nothing downloaded) and ``--adapters`` random LoRA adapters of ``--rank`` on q/k/v/o:

- ``bf16``: the engine at ``--rows`` rows, mixed adapters (row ``i`` uses adapter
  ``i % adapters``) and base only, ``--new-tokens`` tokens a row, greedy;
- ``one_at_a_time``: the seed's pattern, PEFT ``set_adapter`` + ``generate``, one request
  at a time (a few requests: its rate does not depend on how many);
- ``4bit``: the engine on the bitsandbytes NF4 model (CUDA, or ``--smoke``);
- ``compile``: the engine with ``compile_decoder`` (its first run, compiling, is timed
  apart as ``compile_s``).

Per run: tokens/s (best of ``--repeats``), the median ms of a decode step (the model
thread's own timing; every step ends reading its tokens, so it includes the device's
work) against the bandwidth floor (weight bytes / 4.8 TB/s). Variants past
``--budget-s`` are skipped; results are rewritten after every variant, so a run cut
short still leaves what it measured.

    python -m bench.gpu [--out DIR] [--shapes 8b,1b] [--smoke]

Writes ``gpu.json`` and ``gpu.md`` to ``--out`` (default ``$OUT``, else bench/results).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.gpu_models import SHAPES, TARGETS, build_model, floor_ms, streamed_weight_bytes
from bench.gpu_runs import Plan, Runner, engine_runs, one_at_a_time_runs
from bench.report import RESULTS

transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


@dataclass
class Report:
    """Everything measured so far; written out after every variant."""

    config: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock read after it is true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Drop the last variant's tensors before the next one builds its model."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """The device memory the variant peaked at (CUDA only)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def versions(device: torch.device) -> dict[str, Any]:
    """What the machine has: packages, device name, CPU count."""
    names = ("torch", "transformers", "peft", "safetensors", "bitsandbytes", "pydantic")
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {
        **found,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def variants(plan: Plan, device: torch.device) -> list[tuple[str, str]]:
    """(shape, variant) in the order they run: the eager engine and its baseline first."""
    quantize = (device.type == "cuda" or plan.smoke) and bool(
        importlib.util.find_spec("bitsandbytes")
    )
    order: list[tuple[str, str]] = []
    for shape in plan.shapes:
        order += [(shape, "bf16"), (shape, "one_at_a_time")]
        if shape in plan.quant_shapes and quantize:
            order.append((shape, "4bit"))
        if shape in plan.compile_shapes:
            order.append((shape, "compile"))
    return order


def run_variant(runner: Runner, shape: str, variant: str) -> list[dict[str, Any]]:
    """The runs of one variant, on a model of its own."""
    if variant == "one_at_a_time":
        return one_at_a_time_runs(runner, shape)
    return engine_runs(runner, shape, variant)


def describe_model(runner: Runner, shape: str) -> dict[str, Any]:
    """Parameter count, streamed weight bytes and the floor of a step, for ``shape``."""
    model = build_model(SHAPES[shape], dtype=runner.dtype, device=runner.device)
    weight_bytes = streamed_weight_bytes(model)
    described = {
        **asdict(SHAPES[shape]),
        "params_billions": sum(p.numel() for p in model.parameters()) / 1e9,
        "weight_bytes": weight_bytes,
        "floor_ms": floor_ms(weight_bytes),
    }
    runner.write_adapters(shape, model)
    del model
    return described


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shape, variant and rows: mixed over base, and mixed over one at a time."""
    rate = {(r["shape"], r["variant"], r["rows"], r["mode"]): r["tokens_per_s"] for r in runs}
    single = {r["shape"]: r["tokens_per_s"] for r in runs if r["mode"] == "one_at_a_time"}
    out = []
    for shape, variant, rows, mode in rate:
        if mode != "mixed" or (shape, variant, rows, "base") not in rate:
            continue
        mixed = rate[(shape, variant, rows, mode)]
        entry = {"shape": shape, "variant": variant, "rows": rows}
        entry["mixed_over_base"] = mixed / rate[(shape, variant, rows, "base")]
        if shape in single:
            entry["mixed_over_one_at_a_time"] = mixed / single[shape]
        out.append(entry)
    return out


def markdown(report: Report) -> list[str]:
    """The runs and ratios as markdown tables."""
    config = report.config
    lines = [
        f"# GPU check of the HF engine on {config['device_name']}: {config['adapters']} "
        f"adapters of rank {config['rank']} on q/k/v/o, {config['new_tokens']} new tokens "
        f"a row, {config['dtype']}",
        "",
        "| shape | variant | rows | mode | tokens/s | ms/step | floor ms | step/floor |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in report.runs:
        lines.append(
            f"| {run['shape']} | {run['variant']} | {run['rows']} | {run['mode']} | "
            f"{run['tokens_per_s']:.1f} | {run['step_ms']:.2f} | {run['floor_ms']:.3g} | "
            f"{run['step_over_floor']:.3g} |"
        )
    lines += ["", "| shape | variant | rows | mixed / base | mixed / one at a time |"]
    lines.append("|---|---|---:|---:|---:|")
    for entry in report.ratios:
        single = entry.get("mixed_over_one_at_a_time")
        lines.append(
            f"| {entry['shape']} | {entry['variant']} | {entry['rows']} | "
            f"{entry['mixed_over_base']:.2f} | {'-' if single is None else f'{single:.1f}x'} |"
        )
    for item in report.skipped:
        lines.append(f"\n- skipped {item['shape']} {item['variant']}: {item['why']}")
    for item in report.errors:
        lines.append(f"\n- FAILED {item['shape']} {item['variant']}: {item['error']}")
    return lines


def write(report: Report, out: Path) -> None:
    """``gpu.json`` and ``gpu.md`` under ``out`` (rewritten as results come in)."""
    out.mkdir(parents=True, exist_ok=True)
    report.ratios = ratios(report.runs)
    (out / "gpu.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "gpu.md").write_text("\n".join(markdown(report)) + "\n")


def measure(plan: Plan, device: torch.device, out: Path) -> Report:
    """Every variant of ``plan`` that fits its budget; failures are recorded, not raised."""
    started = time.perf_counter()
    dtype = torch.bfloat16
    config = {**asdict(plan), **versions(device), "dtype": str(dtype).split(".")[-1]}
    config["targets"] = list(TARGETS)
    report = Report(config=config)
    with tempfile.TemporaryDirectory(prefix="loraq-gpu-") as tmp:
        runner = Runner(plan=plan, device=device, dtype=dtype, root=Path(tmp), sync=sync)
        for shape, variant in variants(plan, device):
            elapsed = time.perf_counter() - started
            if elapsed > plan.budget_s:
                why = f"budget: {elapsed:.0f} s of {plan.budget_s:.0f} s spent"
                report.skipped.append({"shape": shape, "variant": variant, "why": why})
                continue
            try:
                if shape not in report.models:
                    report.models[shape] = describe_model(runner, shape)
                runner.floor_ms[shape] = report.models[shape]["floor_ms"]
                runs = run_variant(runner, shape, variant)
                for run in runs:
                    run["peak_gib"] = peak_gib(device)
                report.runs += runs
            except Exception as exc:  # one variant's failure must not lose the others
                traceback.print_exc()
                report.errors.append({"shape": shape, "variant": variant, "error": repr(exc)})
            free(device)
            report.seconds = time.perf_counter() - started
            write(report, out)
    return report


def parse_plan(argv: list[str] | None = None) -> tuple[Plan, Path, str]:
    """The plan, the output folder and the device setting from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="default $OUT, else bench/results")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, seconds, any device")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--shapes", help="comma-separated of " + ", ".join(SHAPES))
    parser.add_argument("--compile-shapes", help="shapes that also run compiled ('' none)")
    parser.add_argument("--quant-shapes", help="shapes that also run 4-bit ('' none)")
    parser.add_argument("--budget-s", type=float, help="skip variants once this is spent")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    plan = Plan.for_smoke() if args.smoke else Plan()
    lists: dict[str, Callable[[str], tuple[str, ...]]] = {
        name: lambda text: tuple(s for s in text.split(",") if s)
        for name in ("shapes", "compile_shapes", "quant_shapes")
    }
    changes: dict[str, Any] = {
        name: lists[name](getattr(args, name)) if name in lists else getattr(args, name)
        for name in ("shapes", "compile_shapes", "quant_shapes", "budget_s", "repeats")
        if getattr(args, name) is not None
    }
    unknown = set(changes.get("shapes", ())) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}")
    out = args.out or Path(os.environ.get("OUT") or RESULTS)
    return replace(plan, **changes), out, args.device


def main(argv: list[str] | None = None) -> None:
    plan, out, device_setting = parse_plan(argv)
    if device_setting == "auto":
        device_setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_setting)
    if device.type == "cpu":
        # One thread: on a shared CPU a second OpenMP thread spins against the neighbours.
        torch.set_num_threads(1)
    report = measure(plan, device, out)
    print("\n".join(markdown(report)))
    print(f"took {report.seconds:.0f} s; wrote {out / 'gpu.json'}")


if __name__ == "__main__":
    main()
