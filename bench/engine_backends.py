"""Both backends on the same workloads, for ``bench/engine.py`` and docs/SERVING.md.

For every batch shape (rows x new tokens): the rows mixed over ``BATCH_ADAPTERS`` adapters
at once, the same rows on the base model only, and the mixed rows one at a time (the first
``ONE_AT_A_TIME_ROWS`` of them: a rate, so fewer rows measure the same thing faster). The
HF engine and vLLM (when installed) get the same model, adapters, prompts and settings;
every row generates exactly its tokens. Runs of one shape alternate, so that load from
neighbours hits all alike; each figure is the best of ``repeats``, and mixed / base is
also given as the median of each turn's pair (the two runs back to back, so the load of
that moment hits both).

Both backends run at the same weights dtype (``float32`` unless told otherwise): asked
for ``auto``, vLLM 0.32 turns a float32 checkpoint into bfloat16 on an x86 CPU (its
``_resolve_auto_dtype``), where our engine keeps the checkpoint's float32, so an
``auto`` run compares two precisions, not two engines. ``--vllm-dtype auto`` measures
that one too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import statistics
import sys
import time
from typing import Any

from bench.local_adapters import resolved, warm
from schemas import GenerationParams
from workers.engine.backend import Backend
from workers.engine.requests import GenerationRequest
from workers.settings import WorkerSettings

ONE_AT_A_TIME_ROWS = 8
BACKENDS = ("hf", "vllm")
RUNS = ("mixed", "base", "one_at_a_time")


def requests(
    rows: int, tokens: int, adapters: int, *, mixed: bool, folder: str | None
) -> list[GenerationRequest]:
    """``rows`` requests of ``tokens`` new tokens; adapters in turn, or the base model."""
    params = GenerationParams(max_new_tokens=tokens)
    names = [f"ad{row % adapters:02d}" if mixed else None for row in range(rows)]
    return [
        GenerationRequest(
            adapter=name,
            prompt=f"request number {row:02d}" + "x" * (row % 5),
            params=params,
            resolved=resolved(folder, name),
        )
        for row, name in enumerate(names)
    ]


async def _together(backend: Backend, batch: list[GenerationRequest]) -> float:
    started = time.perf_counter()
    outputs = await asyncio.gather(*[backend.generate(r) for r in batch])
    return sum(o.completion_tokens for o in outputs) / (time.perf_counter() - started)


async def _one_at_a_time(backend: Backend, batch: list[GenerationRequest]) -> float:
    started, tokens = time.perf_counter(), 0
    for request in batch:
        tokens += (await backend.generate(request)).completion_tokens
    return tokens / (time.perf_counter() - started)


async def measure(
    backend: Backend, shapes: list[tuple[int, int]], *, adapters: int, folder: str | None
) -> list[dict[str, list[float]]]:
    """One turn of every run of every shape on ``backend`` (its adapters, in ``folder``,
    made warm first, each shape warmed up once): tokens/s per run, as one-element lists."""
    for index in range(adapters):
        await backend.ensure_adapter(warm(folder, f"ad{index:02d}"))
    results = []
    for rows, tokens in shapes:
        mixed = requests(rows, tokens, adapters, mixed=True, folder=folder)
        base = requests(rows, tokens, adapters, mixed=False, folder=folder)
        await _together(backend, mixed)  # warm-up of this shape
        results.append(
            {
                "mixed": [await _together(backend, mixed)],
                "base": [await _together(backend, base)],
                "one_at_a_time": [await _one_at_a_time(backend, mixed[:ONE_AT_A_TIME_ROWS])],
            }
        )
    return results


def summary(shapes: list[tuple[int, int]], turns: list[list[dict[str, list[float]]]]) -> Any:
    """Per shape, the runs of every turn, the best of each, and mixed / base as the median
    of each turn's pair."""
    results = []
    for index, (rows, tokens) in enumerate(shapes):
        rates = {run: [turn[index][run][0] for turn in turns] for run in RUNS}
        paired = statistics.median(
            m / b for m, b in zip(rates["mixed"], rates["base"], strict=True)
        )
        results.append(
            {
                "rows": rows,
                "new_tokens": tokens,
                **{f"{run}_tokens_per_s": max(rates[run]) for run in RUNS},
                "mixed_over_base_paired": paired,
                "runs": rates,
            }
        )
    return results


def sized(settings: WorkerSettings, shapes: list[tuple[int, int]]) -> WorkerSettings:
    """``settings`` with room for the widest and the longest shape."""
    longest = max(tokens for _, tokens in shapes)
    return settings.model_copy(
        update={
            "max_batch_size": max(rows for rows, _ in shapes),
            "max_new_tokens": max(longest, settings.max_new_tokens),
        }
    )


def _run_hf(settings: WorkerSettings, shapes: list[tuple[int, int]], adapters: int) -> Any:
    from workers.engine.engine import Engine
    from workers.engine.model_loader import load_model

    async def main() -> list[dict[str, Any]]:
        engine = Engine(settings, load_model(settings))
        try:
            return await measure(engine, shapes, adapters=adapters, folder=settings.adapter_dir)
        finally:
            await engine.close()

    return asyncio.run(main())


def _run_vllm(settings: WorkerSettings, shapes: list[tuple[int, int]], adapters: int) -> Any:
    from workers.engine.vllm_backend import VllmBackend

    # Without it, vLLM's CPU worker reserves 92 % of the NUMA node's memory for its KV
    # cache and refuses to start when less is free; 1 GiB holds every shape here.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    async def main() -> list[dict[str, Any]]:
        # Built on the loop (and thread) that uses it: vLLM binds to both.
        backend = VllmBackend.from_settings(settings.model_copy(update={"engine": "vllm"}))
        try:
            return await measure(backend, shapes, adapters=adapters, folder=settings.adapter_dir)
        finally:
            await backend.close()

    return asyncio.run(main())


def backend_runs(
    settings: WorkerSettings,
    shapes: list[tuple[int, int]],
    *,
    adapters: int,
    repeats: int,
    vllm_dtype: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per backend (``hf``, and ``vllm`` when it is installed), :func:`summary` of
    ``repeats`` turns. The backends take turns (a fresh engine each, one turn of every
    shape), so that turn ``i`` of both ran minutes apart, not a whole bench apart: the
    load of the shared cores moves more than the backends differ.

    vLLM runs at ``settings.dtype`` unless ``vllm_dtype`` names another (``auto``: its own
    choice).
    """
    settings = sized(settings, shapes)
    backends = {"hf": (_run_hf, settings)}
    if importlib.util.find_spec("vllm") is not None:
        dtype = vllm_dtype or settings.dtype
        backends["vllm"] = (_run_vllm, settings.model_copy(update={"dtype": dtype}))
    turns: dict[str, list[Any]] = {name: [] for name in backends}
    for turn in range(repeats):
        for name, (run, backend_settings) in backends.items():
            print(f"backends: turn {turn + 1} of {repeats}, {name}", file=sys.stderr, flush=True)
            turns[name].append(run(backend_settings, shapes, adapters))
    return {name: summary(shapes, runs) for name, runs in turns.items()}


def paired(
    results: dict[str, list[dict[str, Any]]], index: int, run: str, other: str = "vllm"
) -> float:
    """Median over turns of our ``run`` / ``other``'s ``run`` at shape ``index``."""
    ours, theirs = results["hf"][index]["runs"][run], results[other][index]["runs"][run]
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def backend_lines(
    results: dict[str, list[dict[str, Any]]], adapters: int, dtypes: dict[str, str]
) -> list[str]:
    """The markdown table: one line per shape, each backend's runs side by side."""
    names = [name for name in BACKENDS if name in results]
    header = " | ".join(f"{name} {run.replace('_', ' ')}" for run in RUNS for name in names)
    weights = ", ".join(f"{name} {dtypes[name]}" for name in names)
    lines = [
        "",
        f"Tokens/s by backend (rows x new tokens, {adapters} adapters mixed; one at a time: "
        f"{ONE_AT_A_TIME_ROWS} of the mixed rows in turn; weights: {weights}):",
        "",
        f"| shape | {header} |",
        "|---|" + "---:|" * (len(RUNS) * len(names)),
    ]
    for index, row in enumerate(results["hf"]):
        cells = [
            f"{results[name][index][f'{run}_tokens_per_s']:.0f}" for run in RUNS for name in names
        ]
        lines.append(f"| {row['rows']} x {row['new_tokens']} | " + " | ".join(cells) + " |")
    return lines


def target_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The issue's CPU targets as ratios within this run, each from the best runs and as
    the median over turns of the ratio within a turn: per shape, our base / vLLM's base
    (>= 1.0), our mixed / our base (>= 0.9), our mixed / vLLM's mixed (>= 2); per row
    count, tokens/s at the most new tokens over the fewest (>= 0.95)."""
    hf = results["hf"]
    shapes = [f"{r['rows']} x {r['new_tokens']}" for r in hf]
    lines = [
        "",
        "Targets, as ratios within this run (best runs / median of the ratios within a turn):",
        "",
        f"| target | {' | '.join(shapes)} |",
        "|---|" + "---:|" * len(hf),
    ]

    def best(run: str, index: int, other: str = "vllm") -> float:
        ours: float = hf[index][f"{run}_tokens_per_s"]
        return ours / float(results[other][index][f"{run}_tokens_per_s"])

    def line(label: str, cells: list[tuple[float, float]]) -> None:
        lines.append(f"| {label} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in cells) + " |")

    indices = range(len(hf))
    if "vllm" in results:
        line(
            "our base / vLLM base (>= 1.0)",
            [(best("base", i), paired(results, i, "base")) for i in indices],
        )
    line(
        "our mixed / our base (>= 0.9)",
        [
            (r["mixed_tokens_per_s"] / r["base_tokens_per_s"], r["mixed_over_base_paired"])
            for r in hf
        ],
    )
    if "vllm" in results:
        line(
            "our mixed / vLLM mixed (>= 2)",
            [(best("mixed", i), paired(results, i, "mixed")) for i in indices],
        )
    for rows in sorted({r["rows"] for r in hf}):
        same = sorted((r for r in hf if r["rows"] == rows), key=lambda r: r["new_tokens"])
        if len(same) < 2:
            continue
        short, long = same[0], same[-1]
        cells = []
        for run in ("base", "mixed"):
            turns = zip(long["runs"][run], short["runs"][run], strict=True)
            within = statistics.median(a / b for a, b in turns)
            top = long[f"{run}_tokens_per_s"] / short[f"{run}_tokens_per_s"]
            cells.append(f"{run} {top:.2f} / {within:.2f}")
        lines.append(
            f"\nAt {rows} rows, tokens/s at {long['new_tokens']} new tokens over "
            f"{short['new_tokens']} (>= 0.95): {', '.join(cells)}."
        )
    return lines


def plot_backends(axis: Any, results: dict[str, list[dict[str, Any]]]) -> None:
    """Grouped bars: each backend's runs per shape."""
    names = [name for name in BACKENDS if name in results]
    shapes = [f"{r['rows']}x{r['new_tokens']}" for r in results["hf"]]
    bars = [(name, run) for name in names for run in RUNS]
    width = 0.8 / len(bars)
    for offset, (name, run) in enumerate(bars):
        x = [i - 0.4 + width * (offset + 0.5) for i in range(len(shapes))]
        values = [r[f"{run}_tokens_per_s"] for r in results[name]]
        axis.bar(x, values, width, label=f"{name} {run.replace('_', ' ')}")
    axis.set_xticks(list(range(len(shapes))), shapes)
    axis.set_ylabel("generated tokens/s (best run)")
    axis.set_title("backends by batch shape")
    axis.legend(fontsize="small")
