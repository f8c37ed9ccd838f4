"""Scenario 7: deadlines and cancellation, before a job starts and while it runs."""

from __future__ import annotations

import time

from schemas import JobRecord, codec
from tests.integration.chaos.accounting import FIGURES, account
from tests.integration.chaos.conftest import JOBS, LONG_TOKENS, ChaosApp

WAITING = 20
# Long base-model prompts: the demo kit babbles the full max_new_tokens on them (several
# seconds for LONG_TOKENS, well past the consumer's cancel check every lease renewal).
LONG_PROMPTS = ["abcde" * 30, "vwxyz" * 30, "klmno" * 30]
LONG_PARAMS = {"max_new_tokens": LONG_TOKENS}


def records(app: ChaosApp, ids: list[str]) -> list[JobRecord]:
    with app.client() as client:
        return [JobRecord.from_hash(job_id, client.hgetall(app.keys.job(job_id))) for job_id in ids]


def streamed_text(app: ChaosApp, job_id: str) -> str:
    """The text chunks of the job's events stream, joined."""
    with app.client() as client:
        events = [codec.decode_fields(f) for _, f in client.xrange(app.keys.job_events(job_id))]
    return "".join(e["text"] for e in events if e.get("event") == "chunk")


def wait_for_text(app: ChaosApp, job_id: str, timeout_s: float = 60.0) -> None:
    """Until the job is running and has streamed some text."""
    deadline = time.monotonic() + timeout_s
    while not streamed_text(app, job_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} streamed no text in {timeout_s}s")
        time.sleep(0.02)


def test_deadlines_and_cancellation_before_start_and_while_running(chaos_app: ChaosApp) -> None:
    app = chaos_app
    app.wait_healthy()
    started = time.monotonic()
    with app.producer() as producer:
        # How long the long jobs run when left alone.
        reference_ids = [producer.submit(p, params=LONG_PARAMS) for p in LONG_PROMPTS]
        done = producer.wait_many(reference_ids, 120)
        full = [str(done[i].result.text if done[i].result else "") for i in reference_ids]

        # Behind a backlog: jobs cancelled at once, and jobs whose deadline passes first.
        expected: dict[str, str | None] = dict(app.submit(JOBS, seed=7))
        doomed = [producer.submit(p, deadline=time.time() + 1.0) for p in app.pool[:WAITING]]
        unwanted = [producer.submit(p, adapter="upper") for p in app.pool[:WAITING]]
        assert all(producer.cancel(job_id) for job_id in unwanted)
        # Running: cancelled once they have streamed some text.
        long_ids = [producer.submit(p, params=LONG_PARAMS) for p in LONG_PROMPTS]
        for job_id in long_ids:
            wait_for_text(app, job_id)
        # All at once: they run side by side, and a later cancel could miss its job.
        asked = time.monotonic()
        for job_id in long_ids:
            producer.cancel(job_id)
        latencies = [time.monotonic() - asked for _ in producer.as_completed(long_ids, 60)]
    expected.update(dict.fromkeys(doomed + unwanted + long_ids))
    app.wait_finished(list(expected), len(expected))

    with app.client() as client:
        tally = account(client, app.keys, expected, "7 deadlines and cancellation")
    tally.figures.update(
        expired_before_start=sum(r.status.value == "expired" for r in records(app, doomed)),
        cancelled_waiting=sum(r.status.value == "cancelled" for r in records(app, unwanted)),
        cancelled_running=len(long_ids),
        cancel_latency_max_s=max(latencies),
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    tally.check()
    for record in records(app, doomed):
        assert record.status.value == "expired" and record.attempts == 0, record
        assert record.error is not None and record.error.type.value == "timeout"
    for record in records(app, unwanted):
        assert record.status.value == "cancelled" and record.attempts == 0, record
        assert record.result is None and record.error is not None
    for record, whole in zip(records(app, long_ids), full, strict=True):
        assert record.status.value == "cancelled" and record.result is not None, record
        assert record.attempts == 1, record  # a stopped generation is not run again
        # The text so far: what it had streamed, less than it would have said if left alone.
        text = record.result.text
        assert text and text == streamed_text(app, record.id) and len(text) < len(whole)
        assert record.result.finish_reason == "cancelled"
