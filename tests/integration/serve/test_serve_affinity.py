"""Adapter affinity: Serve's router sends a job to the replica that has its adapter warm.

2 model replicas with room for 2 adapters each, 4 adapters, 200 jobs in random order,
once as the app runs by default (the scheduling window places jobs, the adapter goes as
multiplexed model id) and once with neither. The figure is the
number of adapter loads (disk to device) the replicas did for the run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from demo.tasks import ADAPTER_RULES, expected_output
from schemas import JobStatus
from tests.integration.serve.conftest import (
    MAX_NEW_TOKENS,
    LiveApp,
    delete_prefix,
    e2e_settings,
)
from workers import launch

JOBS = 200
# With affinity and warm replicas the ideal is no load at all (4 adapters fit the 2 x 2
# slots); the router's affinity is soft (a busy warm replica spills over, a replica with
# an adapter not yet known to the router gets it again), so allow a small multiple of 4.
MAX_LOADS_WITH_AFFINITY = 3 * len(ADAPTER_RULES)


def loads(stats: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {replica: int(s["cache_loads"]) for replica, s in stats.items()}


def run_plan(app: LiveApp, plan: list[tuple[str, str]]) -> None:
    """Run the jobs of ``plan`` through the queue; each must give its adapter's output."""
    with app.producer() as producer:
        ids = producer.submit_many(
            [
                {"adapter": a, "prompt": p, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                for a, p in plan
            ]
        )
        records = producer.wait_many(ids, timeout=240)
    for job_id, (adapter, prompt) in zip(ids, plan, strict=True):
        record = records[job_id]
        assert record.status is JobStatus.SUCCEEDED, record
        assert record.result is not None
        assert record.result.text == expected_output(adapter, prompt)


def measured_loads(
    app: LiveApp, prompts: list[str], seed: int
) -> tuple[dict[str, int], dict[str, int]]:
    """Adapter loads per replica during a short warm-up (two jobs per adapter), and then
    during the 200 jobs; only the latter is compared, so neither run pays there for the
    first load of each adapter."""
    rng = random.Random(seed)
    adapters = list(ADAPTER_RULES)
    start = loads(app.model_stats())
    run_plan(app, [(adapters[i % len(adapters)], prompts[i]) for i in range(2 * len(adapters))])
    warm = loads(app.model_stats())
    run_plan(app, [(rng.choice(adapters), rng.choice(prompts)) for _ in range(JOBS)])
    end = loads(app.model_stats())
    return delta(start, warm), delta(warm, end)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {replica: count - before.get(replica, 0) for replica, count in after.items()}


@contextmanager
def fresh_app(shared: LiveApp, name: str, **overrides: Any) -> Iterator[LiveApp]:
    """A second application next to the shared one, on new replicas and a prefix of its own."""
    settings = e2e_settings(shared.redis_url, app_name=name, **overrides)
    running = launch.deploy(settings)
    try:
        yield LiveApp(running, shared.redis_url)
    finally:
        launch.shutdown(running)
        delete_prefix(shared.redis_url, settings.prefix)


def test_affinity_routing_keeps_adapter_loads_near_one_per_adapter(
    live_app: LiveApp, kit_prompts: list[str]
) -> None:
    warmup, with_affinity = measured_loads(live_app, kit_prompts, seed=11)
    # The baseline places jobs blindly: no model id for Serve's router, and no scheduling
    # window (whose scheduler places jobs by the replicas' warm adapters itself).
    with fresh_app(live_app, "e2e-no-affinity", affinity_routing=False, schedule_window=0) as app:
        warmup_without, without = measured_loads(app, kit_prompts, seed=11)
    total, total_without = sum(with_affinity.values()), sum(without.values())
    print(
        f"\nadapter loads for {JOBS} jobs, 4 adapters, 2 replicas x 2 slots (after a warm-up "
        f"of 8 jobs):"
        f"\n  with affinity (adapter as multiplexed model id): {total} {with_affinity}"
        f" (warm-up: {sum(warmup.values())})"
        f"\n  without (model id left out):                    {total_without} {without}"
        f" (warm-up: {sum(warmup_without.values())})"
    )
    assert total <= MAX_LOADS_WITH_AFFINITY
    assert total < total_without
