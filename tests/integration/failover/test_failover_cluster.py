"""Issue 25's Cluster acceptance: two queues on different shards of a three-primary
cluster, 500 jobs each, and the busiest queue's slot migrated to the third primary while
jobs are submitted and run; then that queue's consumer replica is SIGKILLed (the chaos
suite's second scenario, on Cluster): its replacement takes its pending entries back from
the slot's new node; and the other queue's model replica with it (the first scenario):
its jobs go back to that queue and run again.

Every key of a queue is in the slot of its prefix's hash tag, so the queue moves whole;
during the move, redis-py follows ``ASK`` and ``MOVED`` and retries ``TRYAGAIN`` (a
script over keys of which some have moved), and afterwards every client finds the slot
on its new node. 0 lost, 0 answered twice, every answer right.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from tests.integration.chaos.accounting import account
from tests.integration.chaos.conftest import chaos_settings, kill
from tests.integration.failover.feeds import (
    FIGURES,
    FailoverApp,
    LibraryFeed,
    cli_round_trip,
    deploy,
)
from tests.integration.failover.topology import Cluster
from workers import launch

JOBS_PER_QUEUE = 500
MIGRATE_AFTER = 200  # ids handed out per queue before the slot moves
FINAL_TIMEOUT_S = 180.0


def prefixes_on_shards(cluster: Cluster, count: int) -> list[str]:
    """``count`` fresh prefixes in braces whose slots are served by different nodes."""
    found: dict[int, str] = {}
    while len(found) < count:
        tag = f"loraqtest:fc{uuid.uuid4().hex[:8]}"
        found.setdefault(cluster.owner(key_slot(tag.encode())).port, "{" + tag + "}")
    return list(found.values())


@pytest.fixture(scope="module")
def cluster_apps(ray_serve: str, cluster: Cluster) -> Iterator[list[FailoverApp]]:
    """The demo served twice on the cluster, one application per prefix."""
    apps: list[FailoverApp] = []
    try:
        for number, prefix in enumerate(prefixes_on_shards(cluster, 2), start=1):
            settings = chaos_settings(
                cluster.url,
                f"failcluster{number}",
                prefix=prefix,
                redis_cluster=True,
                num_model_replicas=1,
                num_consumer_replicas=1,
            )
            apps.append(deploy(ray_serve, settings, apps[0].pool if apps else None))
        yield apps
    finally:
        for app in apps:
            launch.shutdown(app.running)


def test_the_busiest_queue_slot_migrates_under_500_jobs_a_queue(
    cluster_apps: list[FailoverApp], cluster: Cluster
) -> None:
    for app in cluster_apps:
        app.wait_healthy()
    feeds = [
        LibraryFeed(app, f"q{number}", JOBS_PER_QUEUE, seed=number).start()
        for number, app in enumerate(cluster_apps, start=1)
    ]
    while min(len(feed.returned) for feed in feeds) < MIGRATE_AFTER:
        time.sleep(0.01)
    backlog = {
        feed.name: len(feed.returned) - feed.app.finished(list(feed.returned)) for feed in feeds
    }
    busiest = max(feeds, key=lambda feed: backlog[feed.name])
    slot = key_slot(busiest.app.settings.prefix.encode())
    source = cluster.owner(slot)
    shards = {cluster.owner(key_slot(feed.app.settings.prefix.encode())).port for feed in feeds}
    target = next(node for node in cluster.nodes if node.port not in shards)
    started = time.monotonic()
    moved = cluster.migrate(slot, target)
    migrate_s = time.monotonic() - started
    migrated_at = time.time()
    assert cluster.owner(slot) is target and source is not target
    # The chaos suite's two SIGKILL scenarios on Cluster: the moved queue's consumer
    # (scenario 2), and the other queue's model replica (scenario 1).
    kill(next(iter(busiest.app.consumer_pids().values())))
    other = next(feed for feed in feeds if feed is not busiest)
    kill(next(iter(other.app.model_pids().values())))
    for feed in feeds:
        feed.join(120)
    for feed in feeds:
        app = feed.app
        app.wait_finished(list(feed.returned), JOBS_PER_QUEUE, timeout_s=FINAL_TIMEOUT_S)
        with app.client() as client:
            tally = account(client, app.keys, feed.returned, f"Cluster: queue {feed.name}")
        tally.figures.update(
            migrated="yes" if feed is busiest else "no",
            killed="consumer" if feed is busiest else "model replica",
            backlog_at_move=backlog[feed.name],
            keys_moved=moved if feed is busiest else 0,
            migrate_s=migrate_s,
            submit_retries=feed.retries,
            all_final_after_move_s=tally.last_finished_at - migrated_at,
        )
        if feed is busiest:  # what clients were told during and after the move
            redirected = [cluster.redirections(node) for node in (source, target)]
            tally.figures.update({k.lower(): sum(r[k] for r in redirected) for k in redirected[0]})
        FIGURES.append(tally)
        print(tally.line(), feed.errors[:2])
        tally.check()
        assert tally.statuses == {"succeeded": JOBS_PER_QUEUE}
    # The CLI on the moved queue, by a node that no longer serves its slot.
    env = {"LORAQ_REDIS_CLUSTER": "true", "LORAQ_REDIS_URL": f"redis://127.0.0.1:{source.port}/0"}
    text, expected_text = cli_round_trip(busiest.app, env)
    assert text == expected_text
