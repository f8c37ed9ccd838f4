"""Both backends on the same workloads, for ``bench/engine.py`` and docs/SERVING.md.

For every batch shape (rows x new tokens): the rows mixed over ``BATCH_ADAPTERS`` adapters
at once, the same rows on the base model only, and the mixed rows one at a time (the first
``ONE_AT_A_TIME_ROWS`` of them: a rate, so fewer rows measure the same thing faster). The
HF engine and vLLM (when installed) get the same model, adapters, prompts and settings;
every row generates exactly its tokens. Runs of one shape alternate, so that load from
neighbours hits all alike; each figure is the best of ``repeats``, and mixed / base is
also given as the median of each turn's pair (the two runs back to back, so the load of
that moment hits both).

Beside loraq's two backends (``hf``, our engine; ``vllm``, loraq's vLLM backend behind
the seam), vLLM's own two ways to serve run the same batches (:mod:`bench.vllm_baselines`):
``vllm_offline`` (``LLM.generate``, its best case) and ``vllm_server`` (its OpenAI
server, one HTTP client per row). Every row is greedy; the generated token counts of every
run are compared across backends, and a disagreement is printed beside the figures.

Both backends run at the same weights dtype (``float32`` unless told otherwise): asked
for ``auto``, vLLM 0.32 turns a float32 checkpoint into bfloat16 on an x86 CPU (its
``_resolve_auto_dtype``), where our engine keeps the checkpoint's float32, so an
``auto`` run compares two precisions, not two engines. ``--vllm-dtype auto`` measures
that one too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.local_adapters import resolved, warm
from schemas import GenerationParams
from workers.engine.backend import Backend
from workers.engine.requests import GenerationRequest
from workers.settings import WorkerSettings

ONE_AT_A_TIME_ROWS = 8
BACKENDS = ("hf", "vllm", "vllm_offline", "vllm_server")
VLLM_BASELINES = ("vllm_offline", "vllm_server")
RUNS = ("mixed", "base", "one_at_a_time")

# One run of a batch: (the requests, one at a time?) -> (tokens generated, seconds)
RunBatch = Callable[[list[GenerationRequest], bool], Awaitable[tuple[int, float]]]


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


def on_backend(backend: Backend) -> RunBatch:
    """A :data:`RunBatch` over a loraq backend: the rows at once, or in turn."""

    async def run(batch: list[GenerationRequest], one_at_a_time: bool) -> tuple[int, float]:
        started = time.perf_counter()
        if one_at_a_time:
            outputs = [await backend.generate(request) for request in batch]
        else:
            outputs = await asyncio.gather(*[backend.generate(r) for r in batch])
        return sum(o.completion_tokens for o in outputs), time.perf_counter() - started

    return run


async def measure(
    run: RunBatch, shapes: list[tuple[int, int]], *, adapters: int, folder: str | None
) -> list[dict[str, Any]]:
    """One turn of every run of every shape (each shape warmed up once): tokens/s per
    run, as one-element lists, and the tokens each run generated."""
    results = []
    for rows, tokens in shapes:
        mixed = requests(rows, tokens, adapters, mixed=True, folder=folder)
        base = requests(rows, tokens, adapters, mixed=False, folder=folder)
        await run(mixed, False)  # warm-up of this shape
        timed = {
            "mixed": await run(mixed, False),
            "base": await run(base, False),
            "one_at_a_time": await run(mixed[:ONE_AT_A_TIME_ROWS], True),
        }
        results.append(
            {
                **{name: [count / seconds] for name, (count, seconds) in timed.items()},
                "tokens": {name: count for name, (count, _) in timed.items()},
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
                "tokens": turns[-1][index]["tokens"],
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
            for index in range(adapters):
                await engine.ensure_adapter(warm(settings.adapter_dir, f"ad{index:02d}"))
            return await measure(
                on_backend(engine), shapes, adapters=adapters, folder=settings.adapter_dir
            )
        finally:
            await engine.close()

    return asyncio.run(main())


def _run_vllm(settings: WorkerSettings, shapes: list[tuple[int, int]], adapters: int) -> Any:
    from workers.engine.vllm_backend import VllmBackend

    async def main() -> list[dict[str, Any]]:
        # Built on the loop (and thread) that uses it: vLLM binds to both.
        backend = VllmBackend.from_settings(settings.model_copy(update={"engine": "vllm"}))
        try:
            for index in range(adapters):
                await backend.ensure_adapter(warm(settings.adapter_dir, f"ad{index:02d}"))
            return await measure(
                on_backend(backend), shapes, adapters=adapters, folder=settings.adapter_dir
            )
        finally:
            await backend.close()

    return asyncio.run(main())


def _run_vllm_offline(
    settings: WorkerSettings, shapes: list[tuple[int, int]], adapters: int
) -> Any:
    from bench.vllm_baselines import offline

    with offline(settings) as run:
        return asyncio.run(measure(run, shapes, adapters=adapters, folder=settings.adapter_dir))


def _run_vllm_server(settings: WorkerSettings, shapes: list[tuple[int, int]], adapters: int) -> Any:
    from bench.vllm_baselines import server

    async def main() -> list[dict[str, Any]]:
        names = [f"ad{index:02d}" for index in range(adapters)]
        async with server(settings, names) as run:
            return await measure(run, shapes, adapters=adapters, folder=settings.adapter_dir)

    return asyncio.run(main())


RUNNERS = {
    "hf": _run_hf,
    "vllm": _run_vllm,
    "vllm_offline": _run_vllm_offline,
    "vllm_server": _run_vllm_server,
}


def backend_runs(
    settings: WorkerSettings,
    shapes: list[tuple[int, int]],
    *,
    adapters: int,
    repeats: int,
    vllm_dtype: str | None = None,
    backends: tuple[str, ...] = BACKENDS,
) -> dict[str, list[dict[str, Any]]]:
    """Per backend of ``backends`` (the vLLM ones only when vLLM is installed),
    :func:`summary` of ``repeats`` turns. The backends take turns (a fresh engine each,
    one turn of every shape), so that turn ``i`` of all ran minutes apart, not a whole
    bench apart: the load of the shared cores moves more than the backends differ.

    vLLM runs at ``settings.dtype`` unless ``vllm_dtype`` names another (``auto``: its own
    choice).
    """
    settings = sized(settings, shapes)
    has_vllm = importlib.util.find_spec("vllm") is not None
    chosen = {}
    for name in backends:
        if name == "hf":
            chosen[name] = settings
        elif has_vllm:
            chosen[name] = settings.model_copy(update={"dtype": vllm_dtype or settings.dtype})
    turns: dict[str, list[Any]] = {name: [] for name in chosen}
    for turn in range(repeats):
        for name, backend_settings in chosen.items():
            print(f"backends: turn {turn + 1} of {repeats}, {name}", file=sys.stderr, flush=True)
            turns[name].append(RUNNERS[name](backend_settings, shapes, adapters))
    return {name: summary(shapes, runs) for name, runs in turns.items()}


def token_mismatches(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Where a backend generated another number of tokens than the first backend for the
    same greedy batch (each row should run exactly its new tokens on every backend)."""
    names = list(results)
    lines = []
    for index, row in enumerate(results[names[0]]):
        for run in RUNS:
            counts = {name: results[name][index]["tokens"][run] for name in names}
            if len(set(counts.values())) > 1:
                shape = f"{row['rows']} x {row['new_tokens']}"
                lines.append(f"{shape} {run}: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    return lines


def paired(
    results: dict[str, list[dict[str, Any]]],
    index: int,
    run: str,
    other: str = "vllm",
    *,
    ours: str = "hf",
) -> float:
    """Median over turns of ``ours``'s ``run`` / ``other``'s ``run`` at shape ``index``."""
    top, theirs = results[ours][index]["runs"][run], results[other][index]["runs"][run]
    return statistics.median(a / b for a, b in zip(top, theirs, strict=True))


def backend_lines(
    results: dict[str, list[dict[str, Any]]], adapters: int, dtypes: dict[str, str]
) -> list[str]:
    """The markdown table: one line per shape, each backend's runs side by side."""
    names = [name for name in BACKENDS if name in results]
    header = " | ".join(f"{name} {run.replace('_', ' ')}" for run in RUNS for name in names)
    weights = ", ".join(f"{name} {dtypes['hf' if name == 'hf' else 'vllm']}" for name in names)
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
    others = [name for name in BACKENDS[1:] if name in results]
    for other in others:
        line(
            f"our base / {other} base (>= 1.0)",
            [(best("base", i, other), paired(results, i, "base", other)) for i in indices],
        )
    line(
        "our mixed / our base (>= 0.9)",
        [
            (r["mixed_tokens_per_s"] / r["base_tokens_per_s"], r["mixed_over_base_paired"])
            for r in hf
        ],
    )
    for other in others:
        line(
            f"our mixed / {other} mixed (>= 2)",
            [(best("mixed", i, other), paired(results, i, "mixed", other)) for i in indices],
        )
    if "vllm" in results:
        # loraq's vLLM backend (the seam, no HTTP) against vLLM's own ways.
        for other in [name for name in VLLM_BASELINES if name in results]:
            for run in ("base", "mixed"):
                line(
                    f"loraq's vllm {run} / {other} {run}",
                    [
                        (
                            results["vllm"][i][f"{run}_tokens_per_s"]
                            / results[other][i][f"{run}_tokens_per_s"],
                            paired(results, i, run, other, ours="vllm"),
                        )
                        for i in indices
                    ],
                )
    mismatches = token_mismatches(results)
    lines.append(
        "\nGreedy token counts: "
        + (
            "**differ** between backends: " + "; ".join(mismatches)
            if mismatches
            else f"the same on every backend ({', '.join(results)}) for every run."
        )
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
