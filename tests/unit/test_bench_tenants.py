"""bench/tenants.py's arithmetic: A's rate over the time B had nothing waiting or running."""

from __future__ import annotations

import pytest

from bench.tenants import idle_rate, jobs_per_s, waits_ms
from schemas import JobRecord, JobStatus


def record(created: float, started: float, finished: float) -> JobRecord:
    return JobRecord(
        id=f"j{created}-{finished}",
        status=JobStatus.SUCCEEDED,
        created_at=created,
        started_at=started,
        finished_at=finished,
    )


def test_a_counts_only_while_b_is_idle() -> None:
    # A: 10 jobs ending at 1..10 s; B busy from 2.5 to 4.5 s and 7.5 to 8.5 s.
    a = [record(0.0, 0.0, float(t)) for t in range(1, 11)]
    b = [record(2.5, 2.6, 4.5), record(7.5, 7.5, 8.5)]
    rate, idle_s = idle_rate(a, b)
    assert idle_s == pytest.approx(7.0)  # 0-2.5, 4.5-7.5, 8.5-10
    # A's jobs ending at 1, 2, 5, 6, 7, 9 (10 is the end, outside the half-open span).
    assert rate == pytest.approx(6 / 7.0)
    assert jobs_per_s(a) == pytest.approx(1.0)
    assert waits_ms(b) == pytest.approx([100.0, 0.0])
