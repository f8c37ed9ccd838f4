"""What the benches that run jobs through the served app share: its size on two cores,
submitting and awaiting a sequence of jobs, their timings, the replicas' counters."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.report import percentile
from bench.workloads import longest_passover
from demo.tasks import heldout_inputs
from producer import Producer
from schemas import JobRecord
from workers import launch
from workers.settings import WorkerSettings

MAX_NEW_TOKENS = 8
MODEL_REPLICAS = 2
DEVICE_SLOTS = 8  # per replica
WAIT_TIMEOUT_S = 600.0


def model_stats(running: launch.Running) -> dict[str, dict[str, Any]]:
    """Every model replica's ``stats()``, by replica id."""
    return asyncio.run(launch.replica_stats(running.model, MODEL_REPLICAS))


def submit_and_wait(
    settings: WorkerSettings, adapters: list[str | None]
) -> tuple[list[JobRecord], float]:
    """All jobs at once, then all awaited: the records in submission order, and seconds."""
    prompts = heldout_inputs()
    params = {"max_new_tokens": MAX_NEW_TOKENS}
    jobs = [
        {"adapter": adapter, "prompt": prompts[index % len(prompts)], "params": params}
        for index, adapter in enumerate(adapters)
    ]
    with Producer.from_settings(settings) as producer:
        started = time.perf_counter()
        ids = producer.submit_many(jobs)
        records = producer.wait_many(ids, timeout=WAIT_TIMEOUT_S)
        seconds = time.perf_counter() - started
    return [records[job_id] for job_id in ids], seconds


def timing(records: list[JobRecord]) -> dict[str, float]:
    """Latency (created → finished), queue wait (created → started), run time (started →
    finished) and the longest passover, in seconds, over the jobs that ran."""
    ran = [r for r in records if r.created_at and r.started_at and r.finished_at]
    if not ran:
        return {}
    latency = [r.finished_at - r.created_at for r in ran]  # type: ignore[operator]
    run_s = [r.finished_at - r.started_at for r in ran]  # type: ignore[operator]
    return {
        "p50_s": percentile(latency, 0.5),
        "p99_s": percentile(latency, 0.99),
        "longest_wait_s": max(r.started_at - r.created_at for r in ran),  # type: ignore[operator]
        "longest_passover_s": longest_passover([r.started_at for r in ran]),  # type: ignore[misc]
        "run_p50_s": percentile(run_s, 0.5),
    }
