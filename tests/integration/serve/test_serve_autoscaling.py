"""Autoscaling on the queue backlog: a backlog in Redis scales LoRAModel from 1 to 2
replicas, and the drained queue brings it back to 1.

The consumer takes few jobs at a time (``max_in_flight``), so the rest wait in Redis,
where Serve's own autoscaler cannot see them; only the backlog policy can.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from ray import serve
from ray.serve._private.common import ReplicaState

from demo.tasks import expected_output
from producer import Producer
from schemas import JobStatus
from tests.integration.serve.conftest import (
    MAX_NEW_TOKENS,
    delete_prefix,
    e2e_settings,
    prompts_right_on_every_model,
)
from tests.integration.serve.test_serve_jobs import job_plan
from workers import launch
from workers.app import MODEL_DEPLOYMENT

JOBS = 600
MAX_IN_FLIGHT = 4
# Replicas push their readings to Serve's controller every 10 s: bounds on each change.
SCALE_UP_WITHIN_S = 90.0
SCALE_DOWN_WITHIN_S = 90.0


@pytest.fixture(scope="module")
def autoscaled(ray_serve: str, redis_url: str) -> Iterator[launch.Running]:
    settings = e2e_settings(
        redis_url,
        app_name="autoscale",
        autoscale=True,
        min_model_replicas=1,
        max_model_replicas=2,
        # One replica carries what the consumer holds at once; more waiting asks for two.
        target_backlog_per_replica=MAX_IN_FLIGHT,
        scale_up_delay_s=1.0,
        scale_down_delay_s=5.0,
        autoscale_metrics_interval_s=1.0,
        max_in_flight=MAX_IN_FLIGHT,
        model_num_cpus=0.5,
    )
    running = launch.deploy(settings)
    yield running
    launch.shutdown(running)
    delete_prefix(redis_url, settings.prefix)


def model_replicas(app_name: str, *, running_only: bool = True) -> int:
    """The app's model replicas that run (or, with ``running_only`` false, also those
    starting or stopping: a change Serve has decided and is carrying out)."""
    states = serve.status().applications[app_name].deployments[MODEL_DEPLOYMENT].replica_states
    if running_only:
        return states.get(ReplicaState.RUNNING, 0)
    return sum(states.values())


def wait_for_replicas(
    app_name: str, count: int, within_s: float, *, running_only: bool = True
) -> float:
    """Seconds until there are ``count`` model replicas (fails after ``within_s``)."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if model_replicas(app_name, running_only=running_only) == count:
            return time.monotonic() - start
        time.sleep(0.25)
    pytest.fail(f"{app_name}: not {count} model replica(s) within {within_s:g}s")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_backlog_scales_the_model_up_and_the_drained_queue_scales_it_down(
    autoscaled: launch.Running,
) -> None:
    settings = autoscaled.settings
    assert model_replicas(settings.app_name) == 1
    plan = job_plan(prompts_right_on_every_model(autoscaled.model), JOBS, seed=7)
    with Producer.from_settings(settings) as producer:
        submitted = time.monotonic()
        ids = producer.submit_many(
            [
                {"adapter": a, "prompt": p, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                for a, p in plan
            ]
        )
        decided_s = wait_for_replicas(settings.app_name, 2, SCALE_UP_WITHIN_S, running_only=False)
        up_s = decided_s + wait_for_replicas(settings.app_name, 2, SCALE_UP_WITHIN_S)
        backlog_at_two = producer.stats()
        records = producer.wait_many(ids, timeout=240)
        drained_s = time.monotonic() - submitted
        down_s = wait_for_replicas(settings.app_name, 1, SCALE_DOWN_WITHIN_S)

    wrong = [
        (adapter, prompt, records[job_id].status.value, records[job_id].result)
        for job_id, (adapter, prompt) in zip(ids, plan, strict=True)
        if records[job_id].status is not JobStatus.SUCCEEDED
        or records[job_id].result is None
        or records[job_id].result.text != expected_output(adapter, prompt)  # type: ignore[union-attr]
    ]
    assert not wrong, f"{len(wrong)} of {JOBS} jobs wrong: {wrong[:5]}"
    served_by = {records[job_id].result.replica for job_id in ids}  # type: ignore[union-attr]
    print(
        f"\nautoscaling: second replica decided {decided_s:.1f}s and running {up_s:.1f}s "
        f"after {JOBS} jobs were queued "
        f"(backlog then: lag {backlog_at_two.lag}, pending {backlog_at_two.pending}); "
        f"queue drained after {drained_s:.1f}s; 2 -> 1 replica {down_s:.1f}s later; "
        f"jobs served by {len(served_by)} replicas"
    )
    assert len(served_by) >= 2, "the second replica took no job"
