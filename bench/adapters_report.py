"""The report of ``bench/adapters.py``: issue 11's targets, the tables and the plot.

Apart from the run so that the figures of a saved ``adapters.json`` can be written again
(``python -c "from bench.adapters_report import rewrite; rewrite()"``) without a rerun.
Not a benchmark: ``make bench`` runs only the modules listed in its ``BENCHES``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.report import RESULTS, save, table

Row = dict[str, Any]


@dataclass(frozen=True)
class Picks:
    """One mode's rows the targets compare."""

    large: Row  # Zipf over the most adapters
    fits: Row
    base: Row
    noop: Row
    rows: list[Row]
    max_passover_s: float | None


@dataclass(frozen=True)
class Target:
    """One of issue 11's acceptance targets."""

    name: str
    goal: float
    at_least: bool  # True: value >= goal; False: value <= goal
    on_main: str  # the figure the issue measured before the work
    value: Callable[[Picks], float | None]

    def met(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return "yes" if (value >= self.goal if self.at_least else value <= self.goal) else "no"


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def _passover_over_bound(picks: Picks) -> float | None:
    """Longest passover over (max_passover_s + a job's median run time), worst workload."""
    if picks.max_passover_s is None:
        return None
    return max(
        row["longest_passover_s"] / (picks.max_passover_s + row["run_p50_s"])
        for row in picks.rows
        if "longest_passover_s" in row
    )


TARGETS = (
    Target(
        "Zipf-1000 jobs/s ÷ fits jobs/s",
        0.8,
        True,
        "0.35",
        lambda p: _ratio(p.large["jobs_per_s"], p.fits["jobs_per_s"]),
    ),
    Target(
        "Zipf-1000 device loads ÷ floor",
        1.5,
        False,
        "2.5",
        lambda p: _ratio(p.large["cache_loads"], p.large["floor"]),
    ),
    Target(
        "Zipf-1000 p99 ÷ fits p99",
        1.5,
        False,
        "2.8",
        lambda p: _ratio(p.large.get("p99_s"), p.fits.get("p99_s")),
    ),
    Target(
        "fits jobs/s ÷ base-only jobs/s",
        0.9,
        True,
        "0.69",
        lambda p: _ratio(p.fits["jobs_per_s"], p.base["jobs_per_s"]),
    ),
    Target(
        "no-op queue ÷ direct handle (jobs/s)",
        1.0,
        True,
        "0.34",
        lambda p: p.noop.get("throughput_ratio"),
    ),
    Target(
        "longest passover ÷ (max_passover_s + run p50)",
        1.0,
        False,
        "-",
        _passover_over_bound,
    ),
)


def picks(results: dict[str, Any], mode: str) -> Picks:
    rows = [row for row in results["rows"] if row["mode"] == mode]
    zipf = [row for row in rows if row["kind"] == "zipf"]
    return Picks(
        large=max(zipf, key=lambda row: row["adapters"]),
        fits=next(row for row in rows if row["kind"] == "uniform"),
        base=next(row for row in rows if row["kind"] == "base"),
        noop=next((row for row in results["noop"] if row["mode"] == mode), {}),
        rows=rows,
        max_passover_s=results["modes"][mode]["max_passover_s"],
    )


def evaluate(results: dict[str, Any]) -> list[Row]:
    """Each target's value in each mode, and whether the window-on mode meets it."""
    modes = list(results["modes"])
    chosen = {mode: picks(results, mode) for mode in modes}
    out = []
    for target in TARGETS:
        values = {mode: target.value(chosen[mode]) for mode in modes}
        out.append(
            {
                "target": target.name,
                "goal": f"{'≥' if target.at_least else '≤'} {target.goal:g}",
                "on_main": target.on_main,
                "values": values,
                "met": {mode: target.met(value) for mode, value in values.items()},
            }
        )
    return out


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


WORKLOAD_COLUMNS: dict[str, Callable[[Row], str]] = {
    "workload": lambda r: r["workload"],
    "mode": lambda r: r["mode"],
    "jobs": lambda r: str(r["jobs"]),
    "jobs/s": lambda r: _num(r["jobs_per_s"]),
    "p50 s": lambda r: _num(r.get("p50_s")),
    "p99 s": lambda r: _num(r.get("p99_s")),
    "longest wait s": lambda r: _num(r.get("longest_wait_s")),
    "longest passover s": lambda r: _num(r.get("longest_passover_s"), 2),
    "run p50 s": lambda r: _num(r.get("run_p50_s"), 2),
    "device loads": lambda r: _num(r["cache_loads"], 0),
    "host loads": lambda r: _num(r["host_loads"], 0),
    "floor": lambda r: str(r["floor"]),
    "ideal LRU": lambda r: str(r["ideal_lru"]),
    "loads ÷ floor": lambda r: _num(_ratio(r["cache_loads"], r["floor"]), 2),
    "in-use evictions": lambda r: _num(r["in_use_evictions"], 0),
    "RSS MiB/replica": lambda r: " ".join(_num(v, 0) for v in r["rss_mib"].values()),
    "failed": lambda r: str(r["failed"]),
}

NOOP_COLUMNS: dict[str, Callable[[Row], str]] = {
    "mode": lambda r: r["mode"],
    "direct jobs/s": lambda r: _num(r.get("direct", {}).get("jobs_per_s")),
    "queue jobs/s": lambda r: _num(r.get("queue", {}).get("jobs_per_s")),
    "queue ÷ direct": lambda r: _num(r.get("throughput_ratio"), 2),
    "rounds": lambda r: f"{_num(r.get('ratio_min'), 2)}-{_num(r.get('ratio_max'), 2)}",
    "bulk ÷ direct": lambda r: _num(r.get("bulk_ratio"), 2),
    "error": lambda r: r.get("error", ""),
}


def target_columns(modes: list[str]) -> dict[str, Callable[[Row], str]]:
    columns: dict[str, Callable[[Row], str]] = {
        "target": lambda r: r["target"],
        "goal": lambda r: r["goal"],
        "on main (issue 11)": lambda r: r["on_main"],
    }
    for mode in modes:
        columns[mode] = lambda r, m=mode: _num(r["values"][m], 2)
    columns[f"met ({modes[0]})"] = lambda r: r["met"][modes[0]]
    return columns


def describe_modes(results: dict[str, Any]) -> list[str]:
    """One line per mode with the scheduling settings it ran with."""
    lines = []
    for mode, values in results["modes"].items():
        shown = ", ".join(
            f"`{name}` = {'(not in this build)' if value is None else value}"
            for name, value in values.items()
        )
        lines.append(f"- {mode}: {shown}")
    if all(values["schedule_window"] is None for values in results["modes"].values()):
        lines.append("- this build has no scheduling window: both modes ran FIFO dispatch")
    return lines


def markdown(results: dict[str, Any]) -> list[str]:
    meta, modes = results["meta"], list(results["modes"])
    return [
        f"# Many adapters through the queue ({meta['model_replicas']} model replicas × "
        f"{meta['device_slots_per_replica']} device slots, {meta['cpus']} CPUs, "
        f"{meta['max_new_tokens']} new tokens per job{', quick run' if meta['quick'] else ''})",
        "",
        *describe_modes(results),
        f"- {max(r['adapters'] for r in results['rows'])} random rank-8 q/v adapters "
        f"generated in {results['generate_s']:.1f} s; seed {meta['seed']}; "
        f"the whole bench took {meta['bench_s']:.0f} s",
        "",
        *table(WORKLOAD_COLUMNS, results["rows"]),
        "",
        "Latency: created → finished; wait: created → started (all jobs are submitted at "
        "once, so the last waits for nearly the whole run in any order); passover: how long "
        "a job still waited after a job submitted behind it had started (what reordering "
        "adds). Floor: distinct adapters in the sequence; ideal LRU: misses of one LRU of "
        "all replicas' slots fed the jobs in submission order, from cold. Loads are deltas "
        "of the replicas' `cache_loads` (device) and `host_loads` (host tier, `-` when this "
        "build has none). RSS: VmRSS of each replica after the workload.",
        "",
        f"## Queue machinery ceiling: no-op model (rounds: {meta['noop_rounds']}, 32 in flight)",
        "",
        *table(NOOP_COLUMNS, results["noop"]),
        "",
        "## Issue 11's targets",
        "",
        *table(target_columns(modes), results["targets"]),
        "",
        "Zipf-1000 is the Zipf workload over the most adapters (fewer in a quick run); the "
        "passover row takes the worst workload, with one job's run time as its median.",
    ]


def plot(results: dict[str, Any]) -> None:
    """Jobs/s and device loads ÷ floor per workload, one bar per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["modes"])
    names = list(dict.fromkeys(row["workload"] for row in results["rows"]))
    cell = {(row["workload"], row["mode"]): row for row in results["rows"]}
    loaded = [name for name in names if cell[(name, modes[0])]["floor"]]
    fig, (speed, loads) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(modes)
    for index, mode in enumerate(modes):
        offset = (index - (len(modes) - 1) / 2) * width
        speed.bar(
            [i + offset for i in range(len(names))],
            [cell[(name, mode)]["jobs_per_s"] for name in names],
            width,
            label=mode,
        )
        loads.bar(
            [i + offset for i in range(len(loaded))],
            [_ratio(cell[(n, mode)]["cache_loads"], cell[(n, mode)]["floor"]) or 0 for n in loaded],
            width,
            label=mode,
        )
    loads.scatter(
        range(len(loaded)),
        [cell[(n, modes[0])]["ideal_lru"] / cell[(n, modes[0])]["floor"] for n in loaded],
        marker="_",
        s=600,
        color="black",
        label="ideal shared LRU",
    )
    loads.axhline(1.5, linestyle=":", color="grey", label="target 1.5")
    speed.set_xticks(range(len(names)), names, rotation=15)
    speed.set_ylabel("jobs/s")
    speed.set_title("throughput through the queue")
    loads.set_xticks(range(len(loaded)), loaded, rotation=15)
    loads.set_ylabel("device loads ÷ distinct adapters")
    loads.set_title("adapter loads against the floor")
    speed.legend()
    loads.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "adapters.png", dpi=120)


def write(results: dict[str, Any]) -> None:
    """``adapters.json``, ``adapters.md`` (printed) and ``adapters.png``."""
    results["targets"] = evaluate(results)
    save("adapters", results, markdown(results))
    plot(results)


def rewrite() -> None:
    """The markdown and the plot again from a saved ``adapters.json``."""
    write(json.loads((RESULTS / "adapters.json").read_text()))
