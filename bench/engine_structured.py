"""What structured output costs the HF engine: tokens/s with half the rows held to JSON
schemas against all rows free, at 16 and 64 rows over 8 adapters, on one engine, runs
interleaved; and each schema's compile time.

Every row runs exactly ``new_tokens`` tokens either way: the schemas' strings are longer
than the budget (``minLength`` = ``maxLength`` = 1000), so a constrained row never ends
before a free one and both runs carry the same rows per pass. What differs is the
grammar's share of each step: filling the masks of the constrained rows (xgrammar's batch
call) and applying them to the logits, plus one ``accept_token`` per constrained row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.local_adapters import resolved, warm
from schemas import GenerationParams
from schemas.response_format import constraint, format_digest
from workers.engine.engine import Engine
from workers.engine.model_loader import load_model
from workers.engine.requests import GenerationRequest
from workers.settings import WorkerSettings

ROWS = (16, 64)
ADAPTERS = 8
LONG = {"type": "string", "minLength": 1000, "maxLength": 1000}
SCHEMAS: dict[str, dict[str, Any]] = {
    "text": {"type": "object", "properties": {"text": LONG}, "required": ["text"]},
    "label+text": {
        "type": "object",
        "properties": {"label": {"enum": ["spam", "ham", "other"]}, "text": LONG},
        "required": ["label", "text"],
    },
    "id+text": {
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "text": LONG},
        "required": ["id", "text"],
    },
    "tags+text": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
            "text": LONG,
        },
        "required": ["tags", "text"],
    },
}

Run = Callable[[], tuple[int, float]]  # one run: (tokens generated, seconds)


def response_format(name: str) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name.replace("+", "_"), "schema": SCHEMAS[name]},
    }


def requests(
    folder: str | None, rows: int, new_tokens: int, *, constrained: bool
) -> list[GenerationRequest]:
    """``rows`` rows over 8 adapters; with ``constrained``, every other row held to one of
    the four schemas in turn."""
    names = list(SCHEMAS)
    batch = []
    for row in range(rows):
        adapter = f"ad{row % ADAPTERS:02d}"
        fmt = response_format(names[row // 2 % 4]) if constrained and row % 2 == 0 else None
        params = GenerationParams.model_validate(
            {"max_new_tokens": new_tokens, "response_format": fmt}
        )
        batch.append(
            GenerationRequest(
                adapter=adapter,
                prompt=f"request number {row:02d}",
                params=params,
                resolved=resolved(folder, adapter),
            )
        )
    return batch


def structured_runs(
    base: Path, adapters: Path, new_tokens: int
) -> tuple[dict[str, Run], dict[str, float], Engine]:
    """The runs (``free_16``, ``half_16``, ``free_64``, ``half_64``) on one engine, the
    compile time of each schema (ms, the first compile: the cache is cold), and the
    engine (close it after the runs)."""
    settings = WorkerSettings.model_validate(
        {
            "model": str(base),
            "adapter_dir": str(adapters),
            "adapters": {},
            "max_batch_size": max(ROWS),
            "batch_wait_ms": 20,
            "max_adapters_per_replica": ADAPTERS,
            "max_new_tokens": new_tokens,
        }
    )
    engine = Engine(settings, load_model(settings))
    folder = str(adapters)

    async def together(batch: list[GenerationRequest]) -> tuple[int, float]:
        started = time.perf_counter()
        outputs = await asyncio.gather(*[engine.generate(r) for r in batch])
        assert all(o.completion_tokens == new_tokens for o in outputs)
        return sum(o.completion_tokens for o in outputs), time.perf_counter() - started

    for index in range(ADAPTERS):
        asyncio.run(engine.ensure_adapter(warm(folder, f"ad{index:02d}")))
    runs: dict[str, Run] = {}
    for rows in ROWS:
        free = requests(folder, rows, new_tokens, constrained=False)
        half = requests(folder, rows, new_tokens, constrained=True)
        runs[f"free_{rows}"] = lambda batch=free: asyncio.run(together(batch))
        runs[f"half_{rows}"] = lambda batch=half: asyncio.run(together(batch))
    asyncio.run(together(requests(folder, max(ROWS), new_tokens, constrained=True)))  # warm-up
    grammars = engine.grammars
    assert grammars is not None
    compile_ms = {}
    for name in SCHEMAS:
        found = constraint(
            GenerationParams.model_validate(
                {"response_format": response_format(name)}
            ).response_format
        )
        assert found is not None
        compile_ms[name] = grammars.compile_ms[format_digest(found)]
    return runs, compile_ms, engine


def structured_lines(results: dict[str, Any]) -> list[str]:
    """The markdown of the structured-output section."""
    runs, ratios = results["runs"], results["ratios"]
    lines = [
        "",
        f"## Structured output: half the rows held to JSON schemas, "
        f"{results['new_tokens']} tokens per row, 8 adapters",
        "",
        "| rows | all free, tokens/s (best) | half constrained, tokens/s (best) | "
        "ratio (best) | ratio (median of turns) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rows in ROWS:
        free, half = runs[f"free_{rows}"], runs[f"half_{rows}"]
        lines.append(
            f"| {rows} | {free['tokens_per_s']:.1f} | {half['tokens_per_s']:.1f} | "
            f"{half['tokens_per_s'] / free['tokens_per_s']:.2f} | "
            f"**{ratios[f'half_over_free_{rows}']:.2f}** |"
        )
    lines += ["", "| schema | compile (ms, xgrammar, cold) |", "|---|---:|"]
    lines += [f"| `{name}` | {ms:.1f} |" for name, ms in results["compile_ms"].items()]
    return lines


def plot_structured(results: dict[str, Any], path: Path) -> None:
    """Bars of tokens/s, free and half constrained, at each row count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    width = 0.35
    for offset, kind, label in (
        (-width / 2, "free", "all free"),
        (width / 2, "half", "half constrained"),
    ):
        values = [results["runs"][f"{kind}_{rows}"]["tokens_per_s"] for rows in ROWS]
        axis.bar([i + offset for i in range(len(ROWS))], values, width, label=label)
    axis.set_xticks(range(len(ROWS)), [f"{rows} rows" for rows in ROWS])
    axis.set_ylabel("tokens/s (best run)")
    axis.set_title("HF engine: structured output's cost")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
