"""Scenarios 1, 2 and 5: a model replica killed, a consumer killed (holding a full
scheduling window), a consumer paused."""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from schemas import codec
from tests.integration.chaos.accounting import FIGURES, account
from tests.integration.chaos.conftest import (
    CHAOS_WINDOW,
    JOBS,
    VISIBILITY_TIMEOUT_S,
    ChaosApp,
    kill,
)


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
