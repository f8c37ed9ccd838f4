"""The pure parts of ``loraq top`` and ``loraq stats``: counts, rates, freshness, the frame."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from producer.activity import count_events, live_replicas, stale_replicas, window_start_id
from producer.rates import Readings, throughput, token_rates
from producer.stats import ConsumerStats, QueueStats, tenant_totals
from producer.top_view import FIXED_LINES, TopFrame, render, row_budget
from schemas.model_starts import StartFailures
from schemas.replicas import BackendStats, ConsumerHeartbeat, ReplicaHeartbeat
from schemas.tenants import TenantFigures


def beat(replica: str, tokens: int, ts: float, **fields: object) -> ReplicaHeartbeat:
    return ReplicaHeartbeat(
        replica=replica,
        backend=BackendStats(tokens_generated=tokens),
        ts=ts,
        interval_s=5.0,
        **fields,
    )


def test_events_are_counted_by_status_and_the_error_rate_is_over_finished_jobs() -> None:
    statuses = ["running"] * 5 + ["succeeded"] * 3 + ["failed", "expired", "queued"]
    entries = [(f"{i}-0", {b"id": b"j", b"status": s.encode()}) for i, s in enumerate(statuses)]
    recent = count_events(entries, window_s=60.0, limit=1000)
    assert recent.by_status == {
        "expired": 1,
        "failed": 1,
        "queued": 1,
        "running": 5,
        "succeeded": 3,
    }
    assert recent.finished == 5
    assert recent.error_rate == pytest.approx(1 / 5)
    assert recent.jobs_per_s == pytest.approx(5 / 60)
    assert not recent.truncated
    assert count_events(entries, limit=len(entries)).truncated
    assert count_events([]).error_rate is None


def test_the_window_opens_at_an_entry_id_in_milliseconds() -> None:
    assert window_start_id(1000.5, 60.0) == "940500-0"


def test_replicas_older_than_three_beats_or_unreadable_are_not_live() -> None:
    fields = {
        b"a": beat("a", 1, ts=100.0).model_dump_json(),
        b"b": beat("b", 1, ts=84.0).model_dump_json(),  # 16 s > 3 x 5 s
        b"c": b"{not json",
        b"d": beat("d", 1, ts=86.0, future_field=1).model_dump_json(),
    }
    assert [r.replica for r in live_replicas(fields, now=101.0)] == ["a", "d"]
    assert stale_replicas(fields, now=101.0) == ["b", "c"]


def test_a_heartbeat_of_an_older_replica_reads_and_older_readers_find_their_counters() -> None:
    old = {"replica": "r", "ts": 1.0, "interval_s": 5.0, "tokens_generated": 7, "rows_in_flight": 2}
    assert ReplicaHeartbeat.model_validate(old).backend == BackendStats(
        tokens_generated=7, rows_in_flight=2
    )
    written = json.loads(beat("r", 7, 1.0).model_dump_json())
    assert written["tokens_generated"] == written["backend"]["tokens_generated"] == 7
    assert ReplicaHeartbeat.model_validate(written) == beat("r", 7, 1.0)


def test_token_rates_use_the_beats_own_times_and_skip_unknown_or_restarted() -> None:
    before = [beat("a", 100, 10.0), beat("b", 500, 10.0), beat("c", 7, 10.0)]
    after = [beat("a", 300, 14.0), beat("b", 20, 15.0), beat("c", 9, 10.0), beat("new", 50, 14.0)]
    assert token_rates(before, after) == {"a": 50.0}


def test_throughput_without_an_older_reading_has_no_token_rate() -> None:
    stats = QueueStats(stream_length=0, dead_letters=0, group_exists=False)
    rate = throughput(None, stats)
    assert (rate.jobs_per_s, rate.error_rate, rate.tokens_per_s) == (0.0, None, None)


def test_readings_rate_against_the_oldest_within_the_window() -> None:
    readings = Readings(window_s=30.0)

    def stats(tokens: int, ts: float) -> QueueStats:
        return QueueStats(0, 0, False, replicas=[beat("a", tokens, ts)])

    assert readings.add(stats(0, 0.0), now=0.0).tokens_per_s is None
    assert readings.add(stats(100, 10.0), now=10.0).tokens_per_s == pytest.approx(10.0)
    assert readings.add(stats(200, 20.0), now=20.0).tokens_per_s == pytest.approx(10.0)
    # The reading at 0 s has left the window: rated against the one at 10 s.
    assert readings.add(stats(700, 40.0), now=40.0).tokens_per_s == pytest.approx(20.0)


@pytest.mark.parametrize("height", [12, 20, 30, 50])
@pytest.mark.parametrize(("consumers", "replicas"), [(0, 0), (1, 2), (3, 40), (40, 3), (60, 60)])
def test_the_frame_fits_the_terminal_and_says_what_it_cut(
    height: int, consumers: int, replicas: int
) -> None:
    stats = QueueStats(
        stream_length=9,
        dead_letters=0,
        group_exists=True,
        consumers=[ConsumerStats(f"c{i}", 0, 0) for i in range(consumers)],
        replicas=[beat(f"r{i}", 0, 0.0, adapters=["x" * 30] * 5) for i in range(replicas)],
    )
    console = Console(width=80, height=height, file=io.StringIO(), record=True)
    console.print(render(TopFrame("p", stats, throughput(None, stats), now=1.0), height))
    lines = console.export_text().rstrip("\n").split("\n")
    assert len(lines) <= max(height, FIXED_LINES + 2), lines
    assert max(map(len, lines)) <= 80
    shown = sum(1 for line in lines if line.startswith((" c", " r")) and line[2].isdigit())
    cut = consumers + replicas - shown
    more = [int(line.split()[1]) for line in lines if line.lstrip().startswith("…")]
    assert sum(more) == cut


def test_row_budget_gives_replicas_first_and_consumers_one_line() -> None:
    assert row_budget(30, consumers=50, replicas=50) == (1, 12)
    assert row_budget(30, consumers=2, replicas=3) == (2, 3)
    assert row_budget(30, consumers=0, replicas=50) == (0, 13)


def test_the_frame_says_why_the_model_replicas_fail_to_start() -> None:
    stats = QueueStats(stream_length=4, dead_letters=0, group_exists=True)
    failing = QueueStats(
        stream_length=4,
        dead_letters=0,
        group_exists=True,
        start_failures=StartFailures(failures=2, cause="ValueError: bad", replica="r1", ts=1.0),
    )
    texts = []
    for each in (stats, failing):
        console = Console(width=120, height=30, file=io.StringIO(), record=True)
        console.print(render(TopFrame("p", each, throughput(None, each), now=1.0), 30))
        texts.append(console.export_text())
    assert "model      no failed start" in texts[0]
    assert "2 failed starts, last on r1: ValueError: bad" in texts[1]


def test_tenants_are_summed_over_consumers_and_shown_most_waiting_first() -> None:
    acme = TenantFigures(waiting=3, in_flight=1, started=4, tokens=12_000, wait_s_total=2.0)
    other = TenantFigures(waiting=30, started=1, tokens=5, wait_s_total=0.5, max_wait_s=0.5)
    beats = [
        ConsumerHeartbeat(consumer=f"c{i}", ts=1.0, interval_s=5.0, tenants={"acme": acme})
        for i in range(2)
    ]
    beats.append(ConsumerHeartbeat(consumer="c2", ts=1.0, interval_s=5.0, tenants={"b": other}))
    totals = tenant_totals(beats)
    assert totals["acme"] == TenantFigures(
        waiting=6, in_flight=2, started=8, tokens=24_000, wait_s_total=4.0
    )
    stats = QueueStats(stream_length=0, dead_letters=0, group_exists=True, tenants=totals)
    console = Console(width=200, height=30, file=io.StringIO(), record=True)
    console.print(render(TopFrame("p", stats, throughput(None, stats), now=1.0), 30))
    line = next(t for t in console.export_text().split("\n") if "tenants" in t)
    assert line.index("b 30 waiting") < line.index("acme 6 waiting 2 running 24.0k tok")
    assert "wait 0.50s" in line
