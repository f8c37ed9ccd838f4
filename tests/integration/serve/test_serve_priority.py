"""Priorities through the queue: behind a backlog, higher-priority jobs start first."""

from __future__ import annotations

import pytest

from schemas import JobStatus
from tests.integration.serve.conftest import MAX_NEW_TOKENS, LiveApp

LOW, HIGH = 150, 8


@pytest.mark.timeout(300)
def test_high_priority_jobs_overtake_a_backlog_of_earlier_ones(
    live_app: LiveApp, kit_prompts: list[str]
) -> None:
    params = {"max_new_tokens": MAX_NEW_TOKENS}
    low = [{"adapter": "upper", "prompt": p, "params": params} for p in kit_prompts] * 4
    high = [
        {"adapter": "reverse", "prompt": p, "params": params, "priority": 10}
        for p in kit_prompts[:HIGH]
    ]
    with live_app.producer() as producer:
        low_ids = producer.submit_many(low[:LOW])
        high_ids = producer.submit_many(high)
        records = producer.wait_many([*low_ids, *high_ids], timeout=240)
    assert {r.status for r in records.values()} == {JobStatus.SUCCEEDED}
    started = sorted(records, key=lambda job_id: records[job_id].started_at or 0.0)
    ranks = [started.index(job_id) for job_id in high_ids]
    # In stream order they would start last (ranks 150-157). The window (128 claimed
    # jobs besides the 32 running) has room for them as soon as they are submitted, and
    # there they go before every low job still waiting.
    in_flight = live_app.settings.max_in_flight
    assert live_app.settings.schedule_window + in_flight >= LOW + HIGH
    assert max(ranks) < 2 * in_flight, ranks
