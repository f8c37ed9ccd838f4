"""Three consumer replicas share two model replicas of two slots: the slot lease keeps the
rule for all of them together (issue 24).

400 jobs over 12 adapters (three run-time names for each demo adapter) go through the
queue of a fresh deployment with ``LORAQ_NUM_CONSUMER_REPLICAS=3``. Each model replica
counts the distinct adapters of the requests it holds, from arrival to end; its high-water
mark must stay within its 2 slots, no adapter may leave a device while in use, and every
job must give its adapter's rule output.
"""

from __future__ import annotations

import random
import time

import pytest
import redis

from demo.tasks import ADAPTER_RULES, expected_output
from producer.adapter_registrations import AdapterRegistrations
from schemas import JobStatus
from tests.conftest import REPO
from tests.integration.serve.conftest import MAX_NEW_TOKENS, LiveApp
from tests.integration.serve.test_serve_affinity import fresh_app

JOBS = 400
CONSUMERS = 3
SLOTS = 2
# Run-time name -> the demo adapter (and rule) behind it: 12 names over the 4 folders.
NAMES = {f"many-{rule}-{i}": rule for rule in ADAPTER_RULES for i in range(3)}


@pytest.mark.timeout(240)
def test_three_consumers_keep_each_replica_within_its_slots(
    live_app: LiveApp, kit_prompts: list[str], r: redis.Redis
) -> None:
    with fresh_app(
        live_app,
        "e2e-many-consumers",
        num_consumer_replicas=CONSUMERS,
        max_adapters_per_replica=SLOTS,
        max_in_flight=16,
    ) as app:
        registrations = AdapterRegistrations(r, app.keys)
        for name, rule in NAMES.items():
            registrations.add(name, str(REPO / "demo" / "adapters" / rule))
        # The planners place jobs once they know the replicas (their first heartbeats).
        deadline = time.monotonic() + 30
        while r.hlen(app.keys.replicas) < app.settings.num_model_replicas:
            assert time.monotonic() < deadline, "no heartbeats from the model replicas"
            time.sleep(0.2)
        rng = random.Random(24)
        jobs = [(rng.choice(list(NAMES)), rng.choice(kit_prompts)) for _ in range(JOBS)]
        started = time.monotonic()
        with app.producer() as producer:
            ids = producer.submit_many(
                [
                    {
                        "adapter": name,
                        "prompt": prompt,
                        "params": {"max_new_tokens": MAX_NEW_TOKENS},
                    }
                    for name, prompt in jobs
                ]
            )
            records = producer.wait_many(ids, timeout=180)
        seconds = time.monotonic() - started
        for job_id, (name, prompt) in zip(ids, jobs, strict=True):
            record = records[job_id]
            assert record.status is JobStatus.SUCCEEDED, record
            assert record.result is not None
            assert record.result.text == expected_output(NAMES[name], prompt), record
        stats = app.model_stats()
        consumers = {record.worker for record in records.values()}
        print(
            f"\n{JOBS} jobs, {len(NAMES)} adapters, {CONSUMERS} consumers, 2 replicas x {SLOTS}"
            f" slots: {seconds:.1f} s; most distinct adapters in flight per replica"
            f" {[s['max_adapters_in_flight'] for s in stats.values()]}, loads"
            f" {[s['cache_loads'] for s in stats.values()]},"
            f" consumers that ran jobs {len(consumers)}"
        )
        assert len(stats) == 2
        for replica, replica_stats in stats.items():
            assert replica_stats["max_adapters_in_flight"] <= SLOTS, (replica, replica_stats)
            assert replica_stats["in_use_evictions"] == 0, (replica, replica_stats)
        # Every consumer took part: the rule held for several planners, not one.
        assert len(consumers) == CONSUMERS, consumers
