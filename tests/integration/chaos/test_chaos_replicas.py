"""Scenarios 1, 2, 5 and 8: a model replica killed, a consumer killed (holding a full
scheduling window), a consumer paused, a model replica killed during an OpenAI batch."""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter

import orjson
import pytest
import redis

from schemas import JobRecord, Keys, codec
from schemas.batches import BatchOutputLine
from tests.integration.chaos.accounting import FIGURES, account
from tests.integration.chaos.batch_driver import BatchDriver
from tests.integration.chaos.conftest import (
    CHAOS_WINDOW,
    JOBS,
    LEFT_AT_BREAK,
    STARTED_BEFORE_BREAK,
    VISIBILITY_TIMEOUT_S,
    ChaosApp,
    kill,
)
from tests.integration.gateway.batch_files import BAD_LINES, completions_file
from tests.integration.serve.conftest import MAX_NEW_TOKENS
from workers.gateway.openai_models import Completion

BATCH_TIMEOUT_S = 240.0


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
        workers = [codec.as_text(client.hget(app.keys.job(j), "worker") or b"") for j in held_jobs]
    overtaken = sum(worker != victim for worker in workers)
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
    assert overtaken >= 1, f"no held job was finished by the other consumer: {workers}"
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


@pytest.mark.timeout(BATCH_TIMEOUT_S + 60)
def test_sigkill_of_a_model_replica_during_a_batch_loses_no_line_and_answers_none_twice(
    chaos_app: ChaosApp,
) -> None:
    app = chaos_app
    app.wait_healthy()
    pids = app.model_pids()
    victim = min(pids)
    started = time.monotonic()
    batch_file = completions_file(
        app.settings.base_model_name, JOBS, prompts=app.pool, max_tokens=MAX_NEW_TOKENS
    )
    with BatchDriver(app.settings) as driver:
        created, job_of = driver.create(batch_file.content)
        ids = list(job_of.values())
        app.wait_finished(ids, STARTED_BEFORE_BREAK)
        left = JOBS - app.finished(ids)
        assert left >= LEFT_AT_BREAK, f"only {left} lines left to kill the replica under"
        rows_at_kill = wait_busy(app, victim)
        kill(pids[victim], signal.SIGKILL)
        killed_at = time.time()
        back_s = app.wait_replaced(app.model_pids, len(pids), pids[victim])
        batch, seen = driver.run_to_end(created.id, BATCH_TIMEOUT_S)
        outputs = driver.lines(batch.output_file_id)
        errors = driver.lines(batch.error_file_id)
    expected = {job_of[custom_id]: text for custom_id, text in batch_file.expected.items()}
    with app.client() as client:
        tally = account(client, app.keys, expected, "8 SIGKILL model replica during a batch")
        by_replica = answered_by(client, app.keys, ids)
    counts = batch.request_counts
    tally.figures.update(
        lines=counts.total,
        output_lines=len(outputs),
        error_lines=len(errors),
        left_at_kill=left,
        victim_rows_at_kill=rows_at_kill,
        victim_answered=by_replica[victim],
        replica_back_s=back_s,
        all_final_after_kill_s=tally.last_finished_at - killed_at,
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    tally.check()
    assert tally.statuses == {"succeeded": JOBS}
    assert by_replica[victim], f"the killed replica served no line: {by_replica}"
    assert batch.status == "completed", batch
    bad = len(BAD_LINES)
    assert (counts.total, counts.completed, counts.failed) == (JOBS + bad, JOBS, bad)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(seen)), seen
    assert_answered_once(outputs, errors, batch_file.expected)
