"""Batch shapes for ``bench/engine.py``: rows x new tokens, mixed adapters against base only.

One engine sized for the widest shape serves every shape; each shape's mixed and base-only
runs alternate, so that the neighbours' load hits both alike. Rows use ``BATCH_ADAPTERS``
adapters in turn, prompts of 14-20 characters; every row generates exactly its tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from schemas import GenerationParams
from workers.engine.engine import Engine
from workers.engine.model_loader import load_model
from workers.engine.requests import GenerationRequest
from workers.settings import WorkerSettings

DEFAULT_SHAPES = ((16, 32), (16, 256), (64, 64))


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"16x32,64x64"`` -> ``[(16, 32), (64, 64)]`` (rows, new tokens)."""
    shapes = []
    for item in text.split(","):
        rows, tokens = item.lower().split("x")
        shapes.append((int(rows), int(tokens)))
    return shapes


def _requests(rows: int, tokens: int, adapters: int, *, mixed: bool) -> list[GenerationRequest]:
    params = GenerationParams(max_new_tokens=tokens)
    return [
        GenerationRequest(
            adapter=f"ad{row % adapters:02d}" if mixed else None,
            prompt=f"request number {row:02d}" + "x" * (row % 5),
            params=params,
        )
        for row in range(rows)
    ]


def _together(engine: Engine, requests: list[GenerationRequest]) -> Callable[[], float]:
    async def run() -> float:
        started = time.perf_counter()
        outputs = await asyncio.gather(*[engine.generate(r) for r in requests])
        return sum(o.completion_tokens for o in outputs) / (time.perf_counter() - started)

    return lambda: asyncio.run(run())


def shape_runs(
    settings: WorkerSettings,
    shapes: list[tuple[int, int]],
    *,
    adapters: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Tokens/s of mixed and base-only batches for every shape (best of ``repeats``)."""
    widest = max(rows for rows, _ in shapes)
    longest = max(tokens for _, tokens in shapes)
    sized = settings.model_copy(
        update={"max_batch_size": widest, "max_new_tokens": max(longest, settings.max_new_tokens)}
    )
    engine = Engine(sized, load_model(sized))
    results = []
    try:
        for name in sorted({f"ad{i:02d}" for i in range(adapters)}):
            asyncio.run(engine.ensure_adapter(name))
        for rows, tokens in shapes:
            mixed = _together(engine, _requests(rows, tokens, adapters, mixed=True))
            base = _together(engine, _requests(rows, tokens, adapters, mixed=False))
            mixed()  # warm-up of this shape
            rates: dict[str, list[float]] = {"mixed": [], "base": []}
            for _ in range(repeats):
                rates["mixed"].append(mixed())
                rates["base"].append(base())
            results.append(
                {
                    "rows": rows,
                    "new_tokens": tokens,
                    "mixed_tokens_per_s": max(rates["mixed"]),
                    "base_tokens_per_s": max(rates["base"]),
                    "runs": rates,
                }
            )
    finally:
        asyncio.run(engine.close())
    return results


def shape_lines(results: list[dict[str, Any]], adapters: int) -> list[str]:
    """The markdown table of :func:`shape_runs`."""
    lines = [
        "",
        f"| shape (rows x new tokens, {adapters} adapters) | mixed tokens/s | "
        "base only tokens/s | mixed / base |",
        "|---|---:|---:|---:|",
    ]
    for row in results:
        mixed, base = row["mixed_tokens_per_s"], row["base_tokens_per_s"]
        lines.append(
            f"| {row['rows']} x {row['new_tokens']} | {mixed:.1f} | {base:.1f} | "
            f"{mixed / base:.2f} |"
        )
    return lines


def plot_shapes(axis: Any, results: list[dict[str, Any]]) -> None:
    """Grouped bars: mixed and base-only tokens/s per shape."""
    labels = [f"{row['rows']}x{row['new_tokens']}" for row in results]
    x = range(len(labels))
    axis.bar([i - 0.2 for i in x], [r["mixed_tokens_per_s"] for r in results], 0.4, label="mixed")
    axis.bar([i + 0.2 for i in x], [r["base_tokens_per_s"] for r in results], 0.4, label="base")
    axis.set_xticks(list(x), labels)
    axis.set_ylabel("generated tokens/s (best run)")
    axis.set_title("batch shapes (rows x new tokens)")
    axis.legend()
