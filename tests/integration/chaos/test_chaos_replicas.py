"""Scenarios 1, 2, 5 and 8: a model replica killed, a consumer killed (holding a full
scheduling window), a consumer paused, a model replica killed halfway through a
1,000-line OpenAI batch."""

from __future__ import annotations

import io
import signal
import time
from collections import Counter

import openai
import orjson
import pytest
import redis

from schemas import JobRecord, Keys, codec
from schemas.batches import BatchOutputLine
from tests.integration.chaos.accounting import FIGURES, account
from tests.integration.chaos.conftest import (
    CHAOS_WINDOW,
    JOBS,
    VISIBILITY_TIMEOUT_S,
    ChaosApp,
    kill,
)
from tests.integration.gateway.batch_files import BAD_LINES, completions_file
from tests.integration.serve.conftest import MAX_NEW_TOKENS
from workers.gateway.openai_models import Completion

BATCH_TIMEOUT_S = 240.0
# Scenario 8's batch: a model replica is killed once half of its lines have run.
BATCH_LINES = 1000


@pytest.mark.parametrize(
    ("scenario", "replicas", "seed"),
    [("1 SIGKILL model replica", "model", 1), ("2 SIGKILL consumer replica", "consumer", 2)],
)
def test_sigkill_of_a_replica_with_300_jobs_in_flight(
    chaos_app: ChaosApp, scenario: str, replicas: str, seed: int
) -> None:
    app = chaos_app
    app.wait_healthy()
    pids_of = app.model_pids if replicas == "model" else app.consumer_pids
    pids = pids_of()
    victim = min(pids)
    started = time.monotonic()
    expected, left = app.under_way(seed)
    with app.client() as client:
        held = client.xpending_range(
            app.keys.jobs, app.keys.group, min="-", max="+", count=1000, consumername=victim
        )
    kill(pids[victim], signal.SIGKILL)
    killed_at = time.time()
    back_s = app.wait_replaced(pids_of, len(pids), pids[victim])
    app.wait_finished(list(expected), JOBS)
    with app.client() as client:
        tally = account(client, app.keys, expected, scenario)
    tally.figures.update(
        kills=1,
        left_at_kill=left,
        victim_held=len(held),
        replica_back_s=back_s,
        all_final_after_kill_s=tally.last_finished_at - killed_at,
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    tally.check()
    assert tally.statuses == {"succeeded": JOBS}
    if replicas == "consumer":
        # The replacement took over the name (and with it the pending entries).
        assert set(pids_of()) == set(pids)
        # The victim died holding a full window of claimed jobs besides those it ran.
        assert len(held) >= CHAOS_WINDOW


def test_a_consumer_paused_past_the_visibility_timeout_is_overtaken_once(
    chaos_app: ChaosApp,
) -> None:
    app = chaos_app
    app.wait_healthy()
    pids = app.consumer_pids()
    victim = min(pids)
    started = time.monotonic()
    expected, _ = app.under_way(seed=5)
    ids = list(expected)
    with app.client() as client:
        kill(pids[victim], signal.SIGSTOP)
        try:
            held = client.xpending_range(
                app.keys.jobs, app.keys.group, min="-", max="+", count=1000, consumername=victim
            )
            held_jobs = []
            for entry in held:
                entry_id = entry["message_id"]
                [(_, fields)] = client.xrange(app.keys.jobs, entry_id, entry_id)
                held_jobs.append(orjson.loads(codec.decode_fields(fields)["job"])["id"])
            time.sleep(VISIBILITY_TIMEOUT_S * 3)
        finally:
            kill(pids[victim], signal.SIGCONT)
        resumed_at = time.time()
        app.wait_finished(ids, JOBS)
        tally = account(client, app.keys, expected, "5 SIGSTOP consumer past visibility")
        finishers = [
            codec.as_text(client.hget(app.keys.job(j), "worker") or b"") for j in held_jobs
        ]
    overtaken = sum(consumer != victim for consumer in finishers)
    tally.figures.update(
        paused_s=VISIBILITY_TIMEOUT_S * 3,
        held_when_paused=len(held_jobs),
        finished_by_other=overtaken,
        last_final_after_resume_s=tally.last_finished_at - resumed_at,
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    tally.check()
    assert tally.statuses == {"succeeded": JOBS}
    assert held_jobs, "the paused consumer held no job"
    assert overtaken >= 1, f"no held job was finished by the other consumer: {finishers}"
    # Paused, not dead: Serve did not replace it.
    assert app.consumer_pids()[victim] == pids[victim]


def wait_busy(app: ChaosApp, replica: str, timeout_s: float = 60.0) -> int:
    """The rows in flight on model ``replica`` once it has some: a kill then lands in the
    middle of generations, not between two."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = int(app.model_stats()[replica]["rows_in_flight"])
        if rows:
            return rows
    raise AssertionError(f"replica {replica} ran nothing for {timeout_s}s")


def assert_answered_once(
    outputs: list[BatchOutputLine], errors: list[BatchOutputLine], expected: dict[str, str]
) -> None:
    """Every good line (``expected``: custom_id -> text) once in the output file, with its
    text, and in no error line; the bad lines once each in the error file."""
    answered = Counter(line.custom_id for line in outputs)
    assert answered == Counter(expected.keys()), answered
    texts = {
        line.custom_id: Completion.model_validate(line.response.body).choices[0].text
        for line in outputs
        if line.response is not None
    }
    assert texts == expected
    assert len(errors) == len(BAD_LINES)
    assert not {line.custom_id for line in errors} & set(expected)


def answered_by(client: redis.Redis, keys: Keys, ids: list[str]) -> Counter[str]:
    """How many of the jobs ``ids`` each model replica answered."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(keys.job(job_id))
    records = [JobRecord.from_hash(i, raw) for i, raw in zip(ids, pipe.execute(), strict=True)]
    return Counter(r.result.replica or "" for r in records if r.result is not None)


def batch_jobs(client: redis.Redis, keys: Keys, batch_id: str, timeout_s: float) -> dict[str, str]:
    """The job id of each queued line by ``custom_id``, read from Redis once the gateway
    has queued them all (the batch left ``validating``)."""
    deadline = time.monotonic() + timeout_s
    while client.hget(keys.batch(batch_id), "status") in (None, b"validating"):
        assert time.monotonic() < deadline, f"batch {batch_id} still validating"
        time.sleep(0.2)
    lines = [orjson.loads(raw) for raw in client.lrange(keys.batch_lines(batch_id), 0, -1)]
    return {line["custom_id"]: line["job_id"] for line in lines if line.get("job_id")}


def wait_status(
    client: redis.Redis, keys: Keys, batch_id: str, timeout_s: float
) -> tuple[str, list[str]]:
    """The batch's final status as its record in Redis says, and the statuses it went
    through, read without the API (a read through it would move the batch on itself)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = codec.as_text(client.hget(keys.batch(batch_id), "status") or b"")
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("completed", "expired", "failed", "cancelled"):
            return status, seen
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} moved only through {seen}")


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[BatchOutputLine]:
    """The lines of an output or error file (none: no file)."""
    if file_id is None:
        return []
    content = client.files.content(file_id).content
    return [BatchOutputLine.model_validate_json(line) for line in content.splitlines()]


@pytest.mark.timeout(BATCH_TIMEOUT_S * 2 + 60)
def test_sigkill_of_a_model_replica_halfway_through_a_batch_loses_no_line_and_answers_none_twice(
    chaos_app: ChaosApp,
) -> None:
    """Scenario 8: a 1,000-line batch through the gateway's Batch API, a model replica
    SIGKILLed once half of it has run. Nobody reads the batch through the API until it has
    ended: the gateway's sweep moves it to ``completed``."""
    app = chaos_app
    app.wait_healthy()
    pids = app.model_pids()
    victim = min(pids)
    started = time.monotonic()
    batch_file = completions_file(
        app.settings.base_model_name, BATCH_LINES, prompts=app.pool, max_tokens=MAX_NEW_TOKENS
    )
    api = openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with app.client() as client:
        uploaded = api.files.create(
            file=("chaos.jsonl", io.BytesIO(batch_file.content)), purpose="batch"
        )
        created = api.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
        job_of = batch_jobs(client, app.keys, created.id, BATCH_TIMEOUT_S)
        # The good lines, and the bad ones that only a worker can refuse (an unknown model).
        ids = list(job_of.values())
        app.wait_finished(ids, len(ids) // 2, timeout_s=BATCH_TIMEOUT_S)
        left = len(ids) - app.finished(ids)
        rows_at_kill = wait_busy(app, victim)
        kill(pids[victim], signal.SIGKILL)
        killed_at = time.time()
        back_s = app.wait_replaced(app.model_pids, len(pids), pids[victim])
        status, moves = wait_status(client, app.keys, created.id, BATCH_TIMEOUT_S)
        ended_at = time.time()
    batch = api.batches.retrieve(created.id)
    outputs = file_lines(api, batch.output_file_id)
    errors = file_lines(api, batch.error_file_id)
    expected = {job_of[custom_id]: text for custom_id, text in batch_file.expected.items()}
    with app.client() as client:
        tally = account(
            client, app.keys, expected, "8 SIGKILL model replica halfway through a batch"
        )
        by_replica = answered_by(client, app.keys, ids)
    counts = batch.request_counts
    assert counts is not None
    tally.figures.update(
        lines=counts.total,
        output_lines=len(outputs),
        error_lines=len(errors),
        left_at_kill=left,
        victim_rows_at_kill=rows_at_kill,
        victim_answered=by_replica[victim],
        replica_back_s=back_s,
        all_final_after_kill_s=tally.last_finished_at - killed_at,
        batch_ended_after_last_job_s=ended_at - tally.last_finished_at,
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    tally.check()
    assert tally.statuses == {"succeeded": BATCH_LINES}
    assert by_replica[victim], f"the killed replica served no line: {by_replica}"
    assert status == "completed" and batch.status == "completed", (moves, batch)
    bad = len(BAD_LINES)
    assert (counts.total, counts.completed, counts.failed) == (BATCH_LINES + bad, BATCH_LINES, bad)
    assert_answered_once(outputs, errors, batch_file.expected)
