"""The CPU measurements behind two engine choices, per kernel, weights read from memory.

- **Row grouping** (``workers/engine/row_groups.py``) and the **LoRA kernel**
  (``csrc/lora_delta.c``): the stacked LoRA hooks of 36 modules of 512 x 512 (the bench
  model's q/k/v/o), rank 16, one decode step of R rows over S adapters: the PyTorch path
  (:meth:`~workers.engine.stacked_lora.StackedLora.delta` and the hook's add) with every
  pass per row, then with every pass grouped, and the kernel (``add_on_kernel``).
- **Linear layout** (``workers/engine/cpu_layout.py``): the bench model's 63 linear layers
  (9 layers of q/k/v/o, gate/up, down) on R rows of one token and one 16 x 20 prefill:
  dense row-major, column-major, oneDNN packed.
- **Decode attention** (``workers/engine/decode_attention.py``): one decode step's attention
  over the bench model's 9 layers (8 heads of 64), R rows of L cached columns in slot
  buffers (views, as the slot cache hands them out), some columns masked as left padding:
  PyTorch's SDPA, loraq's kernel, and a plain sum of the same keys and values (the read
  floor).

Before each sweep a 120 MB buffer is written, so that the weights come from memory as in
a model's step (a sweep of one module's small stacks alone would sit in cache, where
reads are nearly free and only a path's overheads show). Each figure is the median of
``--repeats`` sweeps, one torch thread.

    python -m bench.cpu_kernels [--repeats 15]

Writes bench/results/cpu_kernels.{json,md,png}.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.report import RESULTS, save, table
from workers.adapters.host_weights import HostAdapter, LoraWeights
from workers.engine.cpu_layout import column_major_linears, pack_linears
from workers.engine.decode_attention import decode_attention, kernel
from workers.engine.row_groups import RowGroups, group_rows
from workers.engine.stacked_lora import StackedLora

WIDTH, RANK, MODULES = 512, 16, 36
GROUPINGS = {
    "per_row": functools.partial(group_rows, min_saved_reads=1 << 30),
    "grouped": functools.partial(group_rows, max_group_share=1.0, min_saved_reads=0),
}
PASSES = [(4, 2), (8, 4), (16, 8), (16, 12), (16, 16), (24, 8), (32, 8), (32, 16), (32, 24)]
PASSES += [(48, 32), (64, 8), (64, 16), (64, 32), (64, 48)]
LAYERS = [(512, 512)] * 4 + [(1536, 512)] * 2 + [(512, 1536)]  # (out, in) of one layer
LAYERS_PER_MODEL = 9
ROWS = [1, 4, 16, 64]
ATTENTION = [(1, 300), (16, 48), (16, 160), (16, 288), (64, 96)]  # (rows, cached columns)
HEADS, HEAD_DIM, PADDING = 8, 64, 6

_flush = torch.empty(30_000_000)


class GroupedBy(StackedLora):
    """Stacked slots whose PyTorch path groups a pass's rows by ``grouping`` (the engine's
    choice, or one of :data:`GROUPINGS` to compare against it)."""

    def __init__(
        self,
        grouping: Callable[[Sequence[int]], RowGroups],
        modules: dict[str, nn.Linear],
        capacity: int,
    ) -> None:
        super().__init__(modules, capacity, cpu_kernel=True)
        self._grouping = grouping

    def _row_groups(self, slots: Sequence[int]) -> RowGroups:
        return self._grouping(slots)


def sweep_ms(step: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``step`` over ``repeats`` sweeps, caches flushed before each."""
    times = []
    for _ in range(repeats + 1):  # the first sweep warms up
        _flush.fill_(1.0)
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:])


def lora_hooks(rows: int, adapters: int, repeats: int) -> dict[str, Any]:
    """Microseconds per hooked module for one pass of ``rows`` over ``adapters``."""
    generator = torch.Generator().manual_seed(0)
    weights = {
        f"m{i}": LoraWeights(
            a=torch.randn(RANK, WIDTH, generator=generator),
            b=torch.randn(WIDTH, RANK, generator=generator),
            scale=2.0,
        )
        for i in range(MODULES)
    }
    names = [f"ad{row % adapters}" for row in range(rows)]
    x = torch.randn(rows, 1, WIDTH, generator=generator)  # [R, 1, in]
    result: dict[str, Any] = {"rows": rows, "adapters": adapters}
    output = torch.zeros(rows, 1, WIDTH)  # what a hook adds into on the kernel
    for label, grouping in (*GROUPINGS.items(), ("kernel", group_rows)):
        # Modules of their own: a StackedLora keeps its stacks by module.
        modules = {name: nn.Linear(WIDTH, WIDTH, bias=False) for name in weights}
        stacked = GroupedBy(grouping, modules, adapters)
        for index in range(adapters):
            adapter = HostAdapter(folder=Path("."), stackable=True, modules=weights)
            stacked.add(f"ad{index}", adapter)

        def step(
            stacked: StackedLora = stacked,
            modules: dict[str, nn.Linear] = modules,
            label: str = label,
        ) -> None:
            with torch.inference_mode():
                for module in modules.values():
                    if label == "kernel":
                        stacked.add_on_kernel(module, x, output)
                    else:
                        delta = stacked.delta(module, x)
                        assert delta is not None
                        output + delta  # the hook adds it too

        stacked.begin(names, x.device)
        if label != "kernel" or stacked.add_on_kernel(next(iter(modules.values())), x, output):
            result[f"{label}_us"] = sweep_ms(step, repeats) * 1000 / MODULES
        stacked.end()
        groups: RowGroups = grouping(_slots(rows, adapters))
        result[f"{label}_groups"] = len(groups.slots)
    chosen = group_rows(_slots(rows, adapters))
    result["engine_groups"] = "grouped" if chosen.size > 1 else "per_row"
    result["grouped_over_per_row"] = result["grouped_us"] / result["per_row_us"]
    if "kernel_us" in result:
        fastest = min(result["grouped_us"], result["per_row_us"])
        result["kernel_over_pytorch"] = result["kernel_us"] / fastest
    return result


def _slots(rows: int, adapters: int) -> Sequence[int]:
    """The slot of each row of a pass of ``rows`` over ``adapters`` (slots from 1)."""
    return [1 + row % adapters for row in range(rows)]


def linears(repeats: int) -> list[dict[str, Any]]:
    """Milliseconds for the bench model's 63 linear layers, per layout and input shape."""
    torch.manual_seed(0)
    layouts: dict[str, nn.Module] = {}
    choices = (
        ("row_major", None),
        ("column_major", column_major_linears),
        ("packed", pack_linears),
    )
    for label, layout in choices:
        model = nn.Sequential(
            *[nn.Linear(i, o, bias=False) for _ in range(LAYERS_PER_MODEL) for o, i in LAYERS]
        )
        if layout is None or layout(model):  # packing lays out nothing without oneDNN
            layouts[label] = model
    shapes = [(rows, 1) for rows in ROWS] + [(16, 20)]
    results = []
    for rows, tokens in shapes:
        inputs = {width: torch.randn(rows, tokens, width) for width in (512, 1536)}
        row: dict[str, Any] = {"rows": rows, "tokens": tokens}
        for label, model in layouts.items():

            def step(model: nn.Module = model, inputs: dict[int, torch.Tensor] = inputs) -> None:
                with torch.inference_mode():
                    for layer in model:
                        layer(inputs[layer.in_features])

            row[f"{label}_ms"] = sweep_ms(step, repeats)
        results.append(row)
    return results


def attention(repeats: int) -> list[dict[str, Any]]:
    """Milliseconds for one decode step's attention over 9 layers, per way of computing it."""
    torch.manual_seed(0)
    return [attention_step(rows, length, repeats) for rows, length in ATTENTION]


def attention_step(rows: int, length: int, repeats: int) -> dict[str, Any]:
    """One shape of :func:`attention`: ``rows`` rows of ``length`` cached columns."""
    module = nn.Module()  # what transformers' attention functions read off a layer
    module.num_key_value_groups, module.is_causal = 1, True
    capacity = 1 << max(7, (length - 1).bit_length())  # as the slot cache doubles
    shape = (rows, HEADS, capacity, HEAD_DIM)
    caches = [(torch.randn(shape), torch.randn(shape)) for _ in range(LAYERS_PER_MODEL)]
    views = [(k[:, :, :length], v[:, :, :length]) for k, v in caches]
    query = torch.randn(rows, 1, HEADS, HEAD_DIM).transpose(1, 2)  # [R, H, 1, D]
    mask = torch.ones(rows, 1, 1, length, dtype=torch.bool)
    mask[..., :PADDING] = False
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ways: dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
        "sdpa": lambda k, v: sdpa(query, k, v, attn_mask=mask)
    }
    if kernel() is not None:
        ways["kernel"] = lambda k, v: decode_attention(module, query, k, v, mask)
    ways["read"] = lambda k, v: (k.sum(), v.sum())
    row: dict[str, Any] = {"rows": rows, "columns": length}
    read_bytes = 2 * rows * HEADS * length * HEAD_DIM * 4 * LAYERS_PER_MODEL
    for label, way in ways.items():
        row[f"{label}_ms"] = sweep_ms(lambda way=way: [way(k, v) for k, v in views], repeats)
        row[f"{label}_gb_s"] = read_bytes / row[f"{label}_ms"] / 1e6
    return row


def plot(
    hooks: list[dict[str, Any]], layers: list[dict[str, Any]], attention: list[dict[str, Any]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(20, 4.5))
    panels = [
        (hooks, "us", lambda h: f"{h['rows']}/{h['adapters']}", "rows / adapters in the pass",
         "µs per hooked module", "stacked LoRA hook, stacks read from memory"),
        (layers, "ms", lambda r: f"{r['rows']}x{r['tokens']}", "rows x tokens",
         "ms for 63 linear layers", "linear layout"),
        (attention, "gb_s", lambda r: f"{r['rows']}x{r['columns']}", "rows x cached columns",
         "GB/s of keys and values", "decode attention, 9 layers"),
    ]  # fmt: skip
    for axis, (rows, unit, label, xlabel, ylabel, title) in zip(axes, panels, strict=True):
        names = [k[: -len(unit) - 1] for k in rows[0] if k.endswith(f"_{unit}")]
        width = 0.8 / len(names)
        for offset, name in enumerate(names):
            positions = [i - 0.4 + width * (offset + 0.5) for i in range(len(rows))]
            axis.bar(positions, [r[f"{name}_{unit}"] for r in rows], width, label=name)
        axis.set_xticks(list(range(len(rows))), [label(r) for r in rows], rotation=45)
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "cpu_kernels.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hooks = [lora_hooks(rows, adapters, args.repeats) for rows, adapters in PASSES]
    layers = linears(args.repeats)
    attended = attention(args.repeats)
    lines = ["# CPU kernels (one torch thread, weights read from memory)", ""]
    lines += table(
        {
            "rows / adapters": lambda h: f"{h['rows']} / {h['adapters']}",
            "groups": lambda h: str(h["grouped_groups"]),
            "per row µs": lambda h: f"{h['per_row_us']:.1f}",
            "grouped µs": lambda h: f"{h['grouped_us']:.1f}",
            "grouped / per row": lambda h: f"{h['grouped_over_per_row']:.2f}",
            "PyTorch path's choice": lambda h: h["engine_groups"],
            "kernel µs": lambda h: f"{h['kernel_us']:.1f}" if "kernel_us" in h else "-",
            "kernel / faster of the two": lambda h: (
                f"{h['kernel_over_pytorch']:.2f}" if "kernel_over_pytorch" in h else "-"
            ),
        },
        hooks,
    )
    names = [k[:-3] for k in layers[0] if k.endswith("_ms")]
    columns: dict[str, Callable[[dict[str, Any]], str]] = {
        "rows x tokens": lambda r: f"{r['rows']} x {r['tokens']}"
    }
    for name in names:
        columns[f"{name} ms"] = functools.partial(lambda r, n: f"{r[f'{n}_ms']:.1f}", n=name)
    if "packed" in names:
        columns["column-major / packed"] = lambda r: f"{r['column_major_ms'] / r['packed_ms']:.2f}x"
    lines += ["", *table(columns, layers)]
    ways = [k[:-3] for k in attended[0] if k.endswith("_ms")]
    columns = {"rows x columns": lambda r: f"{r['rows']} x {r['columns']}"}
    for name in ways:
        columns[f"{name} ms (GB/s)"] = functools.partial(
            lambda r, n: f"{r[f'{n}_ms']:.2f} ({r[f'{n}_gb_s']:.1f})", n=name
        )
    if "kernel" in ways:
        columns["sdpa / kernel"] = lambda r: f"{r['sdpa_ms'] / r['kernel_ms']:.2f}x"
    lines += ["", *table(columns, attended)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    save("cpu_kernels", {"lora_hooks": hooks, "linears": layers, "attention": attended}, lines)
    plot(hooks, layers, attended)


if __name__ == "__main__":
    main()
