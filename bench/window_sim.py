"""The scheduling policy alone, simulated: device loads against the window's size.

No Ray, Redis or model: the real :func:`workers.scheduling.planner.plan` drives replicas
modelled as an LRU of device slots (evicting only adapters no job runs), with every job
taking the same time. That isolates what the window's size does to grouping, which the
served bench (``bench/adapters.py``) measures with all the noise of a real run. The
workloads are bench/adapters.py's (same seeds). The baseline is the ideal LRU over all
slots in submission order, which FIFO dispatch matches in the served bench.

    python -m bench.window_sim

Writes bench/results/window_sim.{json,md,png}.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.report import RESULTS, save, table
from bench.workloads import Workload, floor, lru_misses, sequence
from workers.scheduling.planner import Limits, ReplicaView, WindowJob, plan

REPLICAS, SLOTS, IN_FLIGHT = 2, 8, 32
JOB_S, PASSOVER_S = 0.1, 5.0
WINDOWS = (32, 64, 128, 256, 512, 1024)


@dataclass
class _Replica:
    device: OrderedDict[str, None] = field(default_factory=OrderedDict)  # LRU first
    running: Counter[str | None] = field(default_factory=Counter)
    loads: int = 0

    def start(self, adapter: str | None) -> None:
        if adapter is not None:
            if adapter not in self.device:
                self.loads += 1
                if len(self.device) >= SLOTS:
                    idle = next(a for a in self.device if self.running[a] == 0)
                    del self.device[idle]
                self.device[adapter] = None
            self.device.move_to_end(adapter)
        self.running[adapter] += 1

    def view(self, rid: str) -> ReplicaView:
        return ReplicaView(rid, SLOTS, tuple(self.device), dict(self.running))


def simulate(adapters: list[str | None], window: int) -> dict[str, float]:
    """Run the jobs (all submitted at 0) through the policy; loads and the longest wait."""
    replicas = {f"r{i}": _Replica() for i in range(REPLICAS)}
    stream = [WindowJob(str(i), name, 0, 0.0) for i, name in enumerate(adapters)][::-1]
    waiting: list[WindowJob] = []
    ends: list[tuple[float, int, str, str | None]] = []
    now, draining, longest = 0.0, {}, 0.0
    while stream or waiting or ends:
        room = window - len(waiting)
        while room > 0 and stream:
            waiting.append(WindowJob(stream[-1].key, stream.pop().adapter, 0, now))
            room -= 1
        result = plan(
            waiting,
            [r.view(rid) for rid, r in replicas.items()],
            Limits(IN_FLIGHT - len(ends), IN_FLIGHT // REPLICAS, PASSOVER_S),
            now=now,
            draining=draining,
        )
        draining = dict(result.draining)
        placed = {d.key: d.replica for d in result.dispatch}
        for job in (j for j in waiting if j.key in placed):
            rid = placed[job.key] or "r0"
            replicas[rid].start(job.adapter)
            heapq.heappush(ends, (now + JOB_S, int(job.key), rid, job.adapter))
            longest = max(longest, now - job.arrived)
        waiting = [j for j in waiting if j.key not in placed]
        if not ends:
            raise RuntimeError(f"{len(waiting)} jobs can never start")
        now, _, rid, adapter = heapq.heappop(ends)
        replicas[rid].running[adapter] -= 1
    return {
        "loads": sum(r.loads for r in replicas.values()),
        "seconds": now,
        "longest_wait_s": longest,
    }


def main() -> None:
    names = [f"adapter-{i:04d}" for i in range(1000)]
    rows = []
    for workload in (
        Workload("Zipf(1.1) over 200", "zipf", 600, 200, seed=0),
        Workload("Zipf(1.1) over 1000", "zipf", 1000, 1000, seed=1),
    ):
        adapters = sequence(workload, names)
        lowest = floor(adapters)
        for window in WINDOWS:
            figures = simulate(adapters, window)
            rows.append(
                {
                    "workload": workload.name,
                    "window": window,
                    "floor": lowest,
                    "ideal_lru": lru_misses(adapters, REPLICAS * SLOTS),
                    **figures,
                    "loads_over_floor": figures["loads"] / lowest,
                }
            )
            print(f"{workload.name}, window {window}: {figures['loads']} loads", flush=True)
    columns = {
        "workload": lambda r: str(r["workload"]),
        "window": lambda r: str(r["window"]),
        "loads": lambda r: str(r["loads"]),
        "floor": lambda r: str(r["floor"]),
        "ideal LRU": lambda r: str(r["ideal_lru"]),
        "loads ÷ floor": lambda r: f"{r['loads_over_floor']:.2f}",
        "longest wait": lambda r: f"{r['longest_wait_s']:.1f} s",
    }
    lines = [
        f"# The policy simulated: {REPLICAS} replicas × {SLOTS} slots, {IN_FLIGHT} in "
        f"flight, every job {JOB_S} s, all jobs submitted at once",
        "",
        *table(columns, rows),
    ]
    save("window_sim", rows, lines)
    plot(rows)


def plot(rows: list[dict[str, float | str]]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(str(r["workload"]) for r in rows):
        mine = [r for r in rows if r["workload"] == name]
        ax.plot(
            [r["window"] for r in mine], [r["loads_over_floor"] for r in mine], "o-", label=name
        )
    ax.axhline(1.5, color="grey", linestyle="--", label="issue 11 target (1.5× floor)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LORAQ_SCHEDULE_WINDOW")
    ax.set_ylabel("device loads ÷ floor")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "window_sim.png", dpi=120)


if __name__ == "__main__":
    main()
