"""The frame of ``loraq top`` as a rich renderable, from plain data (no Redis here).

Sized for the terminal: the tables get the rows the height leaves, and say how many
more there are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from producer.rates import Throughput
from producer.stats import QueueStats
from schemas.records import JobStatus

# Lines the frame takes besides table rows: the queue panel (7) and, per table, its
# title, header and the box's top, header rule and bottom (5 each).
FIXED_LINES = 17
_SHORT_ID = 12


@dataclass(frozen=True)
class TopFrame:
    """Everything one frame shows."""

    prefix: str
    stats: QueueStats
    throughput: Throughput
    now: float


def row_budget(height: int, consumers: int, replicas: int) -> tuple[int, int]:
    """Lines for the consumers' and the replicas' rows so that the frame fits ``height``.

    Replicas come first (they are what an operator watches), leaving the consumers at
    least one line; a table that is cut ends with a ``… n more`` line.
    """
    budget = max(2, height - FIXED_LINES)
    replica_rows = min(replicas, budget - 1 if consumers else budget)
    return min(consumers, budget - replica_rows), replica_rows


def render(frame: TopFrame, height: int) -> RenderableType:
    """The whole frame for a terminal ``height`` lines high."""
    stats = frame.stats
    consumer_rows, replica_rows = row_budget(height, len(stats.consumers), len(stats.replicas))
    return Group(
        _queue_panel(frame),
        _consumers_table(stats, consumer_rows),
        _replicas_table(frame, replica_rows),
    )


def _queue_panel(frame: TopFrame) -> Panel:
    stats = frame.stats
    lag = "?" if stats.lag is None else str(stats.lag)
    group = "" if stats.group_exists else "  (no consumer group yet)"
    queue = Text.assemble(
        ("queue      ", "bold"),
        f"length {stats.stream_length}  lag {lag}  pending {stats.pending}  ",
        ("dead " + str(stats.dead_letters), "red" if stats.dead_letters else ""),
        group,
    )
    counts = stats.recent.by_status
    window = Text.assemble(
        (f"{f'last {stats.recent.window_s:.0f}s':<11}", "bold"),
        "  ".join(f"{status.value} {counts.get(status.value, 0)}" for status in JobStatus),
        " (truncated)" if stats.recent.truncated else "",
    )
    rate = frame.throughput
    errors = "–" if rate.error_rate is None else f"{rate.error_rate:.1%}"
    tokens = "–" if rate.tokens_per_s is None else f"{rate.tokens_per_s:.1f}"
    throughput = Text.assemble(
        ("throughput ", "bold"),
        f"{rate.jobs_per_s:.2f} jobs/s  {tokens} tokens/s  errors {errors}",
    )
    clock = time.strftime("%H:%M:%S", time.localtime(frame.now))
    lines = (queue, window, throughput, _starts_line(stats), _tenants_line(stats))
    for line in lines:
        # One line each, cut on a narrow terminal: the frame's height must not change.
        line.no_wrap, line.overflow = True, "ellipsis"
    return Panel(
        Group(*lines),
        title=f"loraq top · {frame.prefix} · {clock}",
        title_align="left",
        box=box.ROUNDED,
    )


def _starts_line(stats: QueueStats) -> Text:
    """The model replicas' failed starts since one last started, with the last cause."""
    record = stats.start_failures
    if record is None or record.failures <= 0:
        return Text.assemble(("model      ", "bold"), "no failed start")
    return Text.assemble(("model      ", "bold"), (record.summary(), "red"))


def _tenants_line(stats: QueueStats) -> Text:
    """Each tenant's jobs waiting in the windows, running, tokens made and mean window
    wait, the most waiting first (cut at the panel's edge)."""
    if not stats.tenants:
        return Text.assemble(("tenants    ", "bold"), "–")
    ranked = sorted(stats.tenants.items(), key=lambda item: (-item[1].waiting, item[0]))
    parts = [
        f"{name} {f.waiting} waiting {f.in_flight} running {_count(f.tokens)} tok "
        f"wait {f.wait_s_total / f.started if f.started else 0.0:.2f}s"
        for name, f in ranked
    ]
    return Text.assemble(("tenants    ", "bold"), " · ".join(parts))


def _count(value: int) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else str(value)


def _table(title: str) -> Table:
    return Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=True, pad_edge=False
    )


def _consumers_table(stats: QueueStats, rows: int) -> Table:
    table = _table(f"consumers ({len(stats.consumers)})")
    table.add_column("name", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("pending", justify="right", width=8)
    table.add_column("idle", justify="right", width=8)
    # The scheduling window: jobs claimed and waiting, and the oldest one's wait.
    table.add_column("window", justify="right", width=7)
    table.add_column("oldest", justify="right", width=7)
    shown = _shown(len(stats.consumers), rows)
    for consumer in stats.consumers[:shown]:
        depth, oldest = consumer.window_depth, consumer.window_oldest_wait_s
        table.add_row(
            consumer.name,
            str(consumer.pending),
            f"{consumer.idle_ms / 1000:.1f}s",
            "-" if depth is None else str(depth),
            "-" if oldest is None else f"{oldest:.1f}s",
        )
    _more(table, len(stats.consumers) - shown)
    return table


def _replicas_table(frame: TopFrame, rows: int) -> Table:
    replicas = frame.stats.replicas
    # The host tier in the title, summed over replicas: the columns are full already.
    backends = [b.backend for b in replicas]
    host = (
        f"host memory hit/read/evict {sum(b.host_hits for b in backends)}/"
        f"{sum(b.host_loads for b in backends)}/{sum(b.host_evictions for b in backends)}, "
        f"{sum(b.host_bytes for b in backends) / 2**20:.1f} MiB"
    )
    # The disk tier only where adapters come from remote storage.
    hits, misses = sum(b.disk.hits for b in replicas), sum(b.disk.misses for b in replicas)
    disk = f" · disk hit/miss {hits}/{misses}" if hits or misses else ""
    table = _table(f"model replicas ({len(replicas)}) · {host}{disk}")
    table.add_column("replica", width=16, no_wrap=True, overflow="ellipsis")
    table.add_column("node", width=_SHORT_ID, no_wrap=True)
    table.add_column("rows", justify="right", width=5)
    table.add_column("warm adapters", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("hit/load/evict", justify="right", width=14, no_wrap=True)
    table.add_column("tok/s", justify="right", width=7)
    table.add_column("beat", justify="right", width=5)
    shown = _shown(len(replicas), rows)
    for beat in replicas[:shown]:
        rate = frame.throughput.tokens_per_s_by_replica.get(beat.replica)
        table.add_row(
            beat.replica,
            beat.node[:_SHORT_ID],
            str(beat.backend.rows_in_flight),
            ", ".join(beat.adapters) or "–",
            f"{beat.backend.cache_hits}/{beat.backend.cache_loads}/{beat.backend.cache_evictions}",
            "–" if rate is None else f"{rate:.1f}",
            f"{max(0.0, frame.now - beat.ts):.0f}s",
        )
    _more(table, len(replicas) - shown)
    return table


def _shown(total: int, rows: int) -> int:
    """Rows of data shown when ``rows`` lines are free: one goes to ``… n more`` if cut."""
    return total if total <= rows else max(0, rows - 1)


def _more(table: Table, hidden: int) -> None:
    if hidden > 0:
        table.add_row(Text(f"… {hidden} more", style="dim"))
