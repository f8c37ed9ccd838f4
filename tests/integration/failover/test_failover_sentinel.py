"""Issue 25's Sentinel acceptance: the primary SIGKILLed under 600 jobs from two producers,
and a model replica with it (the chaos suite's first scenario, on Sentinel).

With ``LORAQ_REDIS_MIN_REPLICAS=1`` a producer gets a job's id only once the replica has
the job, so the promoted replica has every job handed out; the workers write each final
result again until the replica has it. Every job whose id came back ends exactly once,
none is lost; jobs run again (their first result not yet replicated) are counted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.integration.chaos.accounting import account
from tests.integration.chaos.conftest import chaos_settings, kill
from tests.integration.failover.feeds import (
    FIGURES,
    FailoverApp,
    LibraryFeed,
    RawFeed,
    cli_round_trip,
    deploy,
)
from tests.integration.failover.topology import SERVICE, SentinelSet
from workers import launch

JOBS_PER_FEED = 300
KILL_AFTER = 200
# Every job handed out is final this soon after the promotion (measured: see
# docs/RELIABILITY.md); generous, for two shared cores.
FINAL_BOUND_S = 90.0
GATEWAY_BOUND_S = 30.0


@pytest.fixture(scope="module")
def sentinel_app(ray_serve: str, sentinel_set: SentinelSet) -> Iterator[FailoverApp]:
    settings = chaos_settings(
        None,
        "failsentinel",
        prefix=f"loraqtest:fs{uuid.uuid4().hex[:8]}",
        redis_sentinels=sentinel_set.addresses,
        redis_sentinel_service=SERVICE,
        redis_min_replicas=1,
    )
    app = deploy(ray_serve, settings)
    try:
        yield app
    finally:
        launch.shutdown(app.running)


def wait_for_gateway(app: FailoverApp, job_id: str, timeout_s: float) -> float:
    """Seconds until ``GET /v1/jobs/{id}`` answers 200 again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if requests.get(f"{app.url}/v1/jobs/{job_id}", timeout=5).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the gateway's queue routes did not answer within {timeout_s}s")


def test_the_primary_killed_under_600_jobs_from_two_producers(
    sentinel_app: FailoverApp, sentinel_set: SentinelSet
) -> None:
    app = sentinel_app
    app.wait_healthy()
    feeds = [
        LibraryFeed(app, "lib", JOBS_PER_FEED, seed=1).start(),
        RawFeed(app, "raw", JOBS_PER_FEED, seed=2).start(),
    ]
    replica_pid = min(app.model_pids().values())
    while sum(len(feed.returned) for feed in feeds) < KILL_AFTER:
        time.sleep(0.01)
    old = sentinel_set.primary
    old_port = old.port
    handed_out_at_kill = sum(len(feed.returned) for feed in feeds)
    old.kill()
    killed_at = time.time()
    kill(replica_pid)  # its jobs go back to the queue, through the failover
    promotion_s = sentinel_set.wait_promoted(old_port)
    promoted_at = time.time()
    sentinel_set.restart_as_replica(old)
    sentinel_set.wait_replicated()
    replica_back_s = time.time() - promoted_at
    gateway_s = wait_for_gateway(app, "lib-0", GATEWAY_BOUND_S)
    for feed in feeds:
        feed.join(120)
    expected = {job_id: text for feed in feeds for job_id, text in feed.returned.items()}
    app.wait_finished(list(expected), len(expected), timeout_s=FINAL_BOUND_S + 30)
    with app.client() as client:
        tally = account(client, app.keys, expected, "Sentinel: primary + model replica SIGKILLed")
    tally.figures.update(
        handed_out_at_kill=handed_out_at_kill,
        promotion_s=promotion_s,
        replica_back_s=replica_back_s,
        gateway_back_after_promotion_s=gateway_s,
        submit_retries=sum(feed.retries for feed in feeds),
        all_final_after_promotion_s=tally.last_finished_at - promoted_at,
        all_final_after_kill_s=tally.last_finished_at - killed_at,
    )
    FIGURES.append(tally)
    print(tally.line(), {feed.name: feed.errors[:2] for feed in feeds})
    tally.check()
    assert tally.jobs == 2 * JOBS_PER_FEED
    assert tally.statuses == {"succeeded": 2 * JOBS_PER_FEED}
    assert tally.last_finished_at - promoted_at < FINAL_BOUND_S
    # The CLI finds the promoted primary through the sentinels as well.
    env = {"LORAQ_REDIS_SENTINELS": sentinel_set.addresses, "LORAQ_REDIS_SENTINEL_SERVICE": SERVICE}
    text, expected_text = cli_round_trip(app, {**env, "LORAQ_REDIS_MIN_REPLICAS": "1"})
    assert text == expected_text
