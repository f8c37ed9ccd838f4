"""Scenarios 3 and 4: the Redis server restarted mid-run, and gone for 10 s.

The application runs on a Redis server of this module's own (AOF on, as in production),
which the tests stop and start again on the same port and data folder.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from demo.tasks import expected_output
from producer.embedded import EmbeddedRedis
from schemas import JobRecord
from tests.integration.chaos.accounting import FIGURES, account
from tests.integration.chaos.conftest import JOBS, ChaosApp, chaos_settings, deploy_chaos_app
from tests.integration.serve.conftest import MAX_NEW_TOKENS
from workers import launch

OUTAGE_S = 10.0
# Sync calls made during the outage: about one every SYNC_EVERY_S.
SYNC_EVERY_S = 0.5


@pytest.fixture(scope="module")
def redis_app(ray_serve: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosApp]:
    server = EmbeddedRedis(state_dir=tmp_path_factory.mktemp("chaos-redis")).start()
    try:
        app = deploy_chaos_app(ray_serve, chaos_settings(server.url, "chaosredis"), server)
        try:
            yield app
        finally:
            launch.shutdown(app.running)
    finally:
        server.stop()


def all_pids(app: ChaosApp) -> set[int]:
    return {*app.model_pids().values(), *app.consumer_pids().values()}


def test_a_redis_restart_in_the_middle_of_300_jobs(redis_app: ChaosApp) -> None:
    app = redis_app
    server = app.redis_server
    assert server is not None and server.appendonly
    app.wait_healthy()
    pids = all_pids(app)
    started = time.monotonic()
    expected, left = app.under_way(seed=3)
    stopped_at = time.time()
    server.stop()  # SIGTERM: Redis writes its AOF out and exits
    server.start()
    restarted_at = time.time()
    app.wait_finished(list(expected), JOBS)
    with app.client() as client:
        tally = account(client, app.keys, expected, "3 Redis restart (AOF)")
    tally.figures.update(
        restarts=1,
        left_at_restart=left,
        down_s=restarted_at - stopped_at,
        all_final_after_restart_s=tally.last_finished_at - restarted_at,
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    tally.check()
    assert tally.statuses == {"succeeded": JOBS}
    assert all_pids(app) == pids, "a replica was restarted"


@dataclass
class SyncProbe:
    """Calls ``POST /v1/generate`` over and over while Redis is down."""

    url: str
    prompt: str
    answers: list[tuple[int, bool, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = {
            "adapter": "reverse",
            "prompt": self.prompt,
            "params": {"max_new_tokens": MAX_NEW_TOKENS},
        }
        while not self.stop.is_set():
            asked = time.monotonic()
            reply = requests.post(self.url + "/v1/generate", json=body, timeout=60)
            right = reply.status_code == 200 and reply.json()["text"] == self.prompt[::-1]
            self.answers.append((reply.status_code, right, time.monotonic() - asked))
            self.stop.wait(SYNC_EVERY_S)


def test_redis_down_for_10_s_during_generation(redis_app: ChaosApp) -> None:
    app = redis_app
    server = app.redis_server
    assert server is not None
    app.wait_healthy()
    pids = all_pids(app)
    prompt = next(p for p in app.pool if expected_output("reverse", p) == p[::-1])
    probe = SyncProbe(app.url, prompt)
    started = time.monotonic()
    expected, left = app.under_way(seed=4)
    ids = list(expected)
    thread = threading.Thread(target=probe.run)
    server.stop()
    stopped_at = time.time()
    thread.start()
    try:
        time.sleep(OUTAGE_S)
    finally:
        probe.stop.set()
        thread.join(60)
        server.start()
    restarted_at = time.time()
    app.wait_finished(ids, JOBS)
    with app.client() as client:
        tally = account(client, app.keys, expected, "4 Redis down 10 s")
        records = [JobRecord.from_hash(i, client.hgetall(app.keys.job(i))) for i in ids]
    # Started before the outage, finished after it, on their first attempt: these
    # generations ran through the outage and their results were kept until Redis was back.
    carried = [
        r
        for r in records
        if r.attempts == 1
        and (r.started_at or 0) < stopped_at
        and (r.finished_at or 0) > restarted_at
    ]
    sync_ok = sum(right for _, right, _ in probe.answers)
    tally.figures.update(
        outage_s=restarted_at - stopped_at,
        left_at_outage=left,
        carried_through=len(carried),
        sync_calls=len(probe.answers),
        sync_right=sync_ok,
        sync_max_s=max((took for _, _, took in probe.answers), default=0.0),
        all_final_after_return_s=tally.last_finished_at - restarted_at,
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    tally.check()
    assert tally.statuses == {"succeeded": JOBS}
    assert len(probe.answers) >= OUTAGE_S / (SYNC_EVERY_S * 4), probe.answers
    assert sync_ok == len(probe.answers), probe.answers
    assert carried, "no generation ran through the outage"
    assert all_pids(app) == pids, "a replica was restarted"
