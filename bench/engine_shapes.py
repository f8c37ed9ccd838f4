"""Batch shapes for ``bench/engine.py``: rows x new tokens, mixed adapters against base only.

The runs are :mod:`bench.engine_backends`'s (both backends on the same shapes); here are
parsing the shapes, and the HF engine's table and plot of them.
"""

from __future__ import annotations

from typing import Any


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"16x32,64x64"`` -> ``[(16, 32), (64, 64)]`` (rows, new tokens)."""
    shapes = []
    for item in text.split(","):
        rows, tokens = item.lower().split("x")
        shapes.append((int(rows), int(tokens)))
    return shapes


def shape_lines(results: list[dict[str, Any]], adapters: int) -> list[str]:
    """The markdown table of the HF engine's shape runs (:mod:`bench.engine_backends`)."""
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
