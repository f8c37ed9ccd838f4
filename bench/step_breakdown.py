"""Where a decode step of the HF engine goes, on the bench model and the real shapes.

For each model of ``--models`` (see :mod:`bench.real_models`) and each row count of
``--rows``, the engine runs one batch of greedy rows (base model only, or ``--mixed``
over 8 adapters) while timers on the model thread split the time:

- **linears**: every ``nn.Linear`` of the decoder blocks (q/k/v/o, gate/up/down; their
  LoRA hooks included on mixed rows);
- **output layer**: ``lm_head`` over the vocabulary, last position only;
- **attention**: the attention modules less their linears (rotary, the cache write, the
  attention itself);
- **rest of the forward**: the model's forward less the above (embedding, norms, the MLP's
  activation, residual adds, transformers' mask and cache glue);
- **sampling**: ``SamplingPlan.next_tokens``;
- **tokens to text**: each row's token accepted, detokenized, stop checks, rows leaving;
- **step bookkeeping**: the rest of ``DecodeBatch.step`` (cache slots, the plan);
- **loop, per step**: the batch's wall time less its prefills and steps, per step: the
  model thread's queue and batcher, asyncio handing results back.

Timers are ``perf_counter`` around module forwards (hooks) and methods (wrapped in this
process only): on a CPU the work is synchronous, so each figure is that code's own time.
The hooks cost a few microseconds each (about 0.5 ms a step on the 30-layer shape).

    python -m bench.step_breakdown [--models bench,smollm2-135m,qwen2.5-0.5b,llama-3.2-1b]
                                   [--rows 16 64] [--new-tokens 32] [--mixed] [--dtype float32]

Writes bench/results/step_breakdown.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.engine import BATCH_ADAPTERS, engine_settings, model_kit
from bench.engine_backends import on_backend, requests
from bench.local_adapters import warm
from bench.report import RESULTS, save
from workers.engine.decode import DecodeBatch
from workers.engine.engine import Engine
from workers.engine.lora_model import MultiLoraModel
from workers.engine.model_loader import load_model
from workers.engine.sampling import SamplingPlan

PARTS = (
    "linears",
    "output layer",
    "attention",
    "rest of the forward",
    "sampling",
    "tokens to text",
    "step bookkeeping",
    "loop, per step",
)


class Clock:
    """Seconds per part, split by phase (``prefill`` or ``decode``), on the model thread."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase = "idle"
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.steps = 0

    def add(self, part: str, seconds: float) -> None:
        self.seconds[self.phase][part] += seconds

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - started)


def _wrap(owner: type, name: str, make: Callable[[Any], Any]) -> Callable[[], None]:
    """Replace ``owner.name`` by ``make(original)``; returns the undo."""
    original = getattr(owner, name)
    setattr(owner, name, functools.wraps(original)(make(original)))
    return lambda: setattr(owner, name, original)


def instrument(clock: Clock) -> Callable[[], None]:
    """Time the engine's methods in this process; returns the undo."""

    def phased(phase: str, part: str) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def timed(*args: Any, **kwargs: Any) -> Any:
                before = clock.phase
                clock.phase = phase
                try:
                    with clock.timing(part):
                        return original(*args, **kwargs)
                finally:
                    clock.phase = before
                    if phase == "decode":
                        clock.steps += 1

            return timed

        return make

    def part(name: str) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def timed(*args: Any, **kwargs: Any) -> Any:
                with clock.timing(name):
                    return original(*args, **kwargs)

            return timed

        return make

    undo = [
        _wrap(DecodeBatch, "admit", phased("prefill", "total")),
        _wrap(DecodeBatch, "step", phased("decode", "total")),
        _wrap(DecodeBatch, "_accept", part("tokens to text")),
        _wrap(SamplingPlan, "next_tokens", part("sampling")),
        _wrap(MultiLoraModel, "last_logits", part("forward")),
    ]
    return lambda: [u() for u in undo]  # type: ignore[func-returns-value]


def hook_modules(model: nn.Module, clock: Clock) -> None:
    """Time the decoder's linears, attention modules and the output layer."""
    output = model.get_output_embeddings()  # type: ignore[operator]
    starts: dict[int, float] = {}

    def before(module: nn.Module, *_: Any) -> None:
        starts[id(module)] = time.perf_counter()

    def after_as(part: str) -> Callable[..., None]:
        def after(module: nn.Module, *_: Any) -> None:
            clock.add(part, time.perf_counter() - starts.pop(id(module)))

        return after

    for name, module in model.named_modules():
        if module is output:
            part = "output layer"
        elif isinstance(module, nn.Linear):
            part = "attention linears" if ".self_attn." in name else "mlp linears"
        elif name.endswith("self_attn"):
            part = "attention module"
        else:
            continue
        module.register_forward_pre_hook(before)
        module.register_forward_hook(after_as(part))


def breakdown(seconds: dict[str, float], steps: int, loop_s: float) -> dict[str, float]:
    """ms per decode step of each of PARTS."""
    linears = seconds["attention linears"] + seconds["mlp linears"]
    attention = seconds["attention module"] - seconds["attention linears"]
    rest = seconds["forward"] - linears - attention - seconds["output layer"]
    bookkeeping = seconds["total"] - seconds["forward"] - seconds["sampling"]
    bookkeeping -= seconds["tokens to text"]
    parts = {
        "linears": linears,
        "output layer": seconds["output layer"],
        "attention": attention,
        "rest of the forward": rest,
        "sampling": seconds["sampling"],
        "tokens to text": seconds["tokens to text"],
        "step bookkeeping": bookkeeping,
        "loop, per step": loop_s,
    }
    return {part: value / steps * 1000 for part, value in parts.items()}


def measure(
    settings: Any, rows: int, new_tokens: int, *, mixed: bool, repeats: int
) -> dict[str, Any]:
    """The fastest of ``repeats`` batches of ``rows`` rows: its breakdown."""
    loaded = load_model(settings)
    engine = Engine(settings, loaded)
    clock = Clock()
    hook_modules(loaded.model, clock)
    best: dict[str, Any] | None = None
    try:
        for index in range(BATCH_ADAPTERS):
            asyncio.run(engine.ensure_adapter(warm(settings.adapter_dir, f"ad{index:02d}")))
        batch = requests(rows, new_tokens, BATCH_ADAPTERS, mixed=mixed, folder=settings.adapter_dir)
        run = on_backend(engine)
        asyncio.run(run(batch, False))  # warm-up
        for _ in range(repeats):
            clock.reset()
            undo = instrument(clock)
            try:
                tokens, seconds = asyncio.run(run(batch, False))
            finally:
                undo()
            decode, prefill = clock.seconds["decode"], clock.seconds["prefill"]
            loop_s = seconds - decode["total"] - prefill["total"]
            result = {
                "rows": rows,
                "tokens": tokens,
                "tokens_per_s": tokens / seconds,
                "steps": clock.steps,
                "step_ms": decode["total"] / clock.steps * 1000,
                "prefill_ms": prefill["total"] * 1000,
                "parts_ms": breakdown(decode, clock.steps, loop_s),
            }
            if best is None or result["tokens_per_s"] > best["tokens_per_s"]:
                best = result
    finally:
        asyncio.run(engine.close())
    assert best is not None
    return best


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"model {name}", file=sys.stderr, flush=True)
            base, adapters = model_kit(Path(tmp), name)
            settings = engine_settings(base, adapters).model_copy(
                update={
                    "dtype": args.dtype,
                    "max_batch_size": max(args.rows),
                    "max_adapters_per_replica": BATCH_ADAPTERS,
                    "max_lora_rank": 16,
                }
            )
            for rows in args.rows:
                row = measure(
                    settings, rows, args.new_tokens, mixed=args.mixed, repeats=args.repeats
                )
                results.append({"model": name, **row})
                print(lines_of(results[-1:])[-1], file=sys.stderr, flush=True)
    return results


def lines_of(results: list[dict[str, Any]]) -> list[str]:
    header = " | ".join(PARTS)
    lines = [
        f"| model | rows | tokens/s | step ms | {header} |",
        "|---|---:|---:|---:|" + "---:|" * len(PARTS),
    ]
    for row in results:
        parts = row["parts_ms"]
        cells = " | ".join(f"{parts[p]:.1f} ({parts[p] / sum(parts.values()):.0%})" for p in PARTS)
        lines.append(
            f"| {row['model']} | {row['rows']} | {row['tokens_per_s']:.0f} | "
            f"{row['step_ms']:.1f} | {cells} |"
        )
    return lines


def plot(results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['model']}\n{r['rows']} rows" for r in results]
    bottom = [0.0] * len(results)
    for part in PARTS:
        values = [r["parts_ms"][part] for r in results]
        axis.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axis.set_ylabel("ms per decode step")
    axis.set_title("where a decode step goes (HF engine, 1 thread)")
    axis.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(RESULTS / "step_breakdown.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="bench,smollm2-135m,qwen2.5-0.5b,llama-3.2-1b")
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mixed", action="store_true", help="rows over 8 adapters")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run(args)
    kind = "8 adapters mixed" if args.mixed else "base model only"
    lines = [
        f"# A decode step of the HF engine: ms per step (share), {kind}, "
        f"{args.new_tokens} new tokens a row, {args.dtype}, {args.threads} thread(s)",
        "",
        *lines_of(results),
    ]
    save("step_breakdown", {"args": vars(args), "results": results}, lines)
    plot(results)


if __name__ == "__main__":
    main()
