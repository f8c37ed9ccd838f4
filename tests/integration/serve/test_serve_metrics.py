"""The Prometheus metrics, scraped from Ray's metrics endpoint during and after a run.

An application of its own (one model replica, two adapter slots, metrics every second),
so that every count is exactly the jobs this test ran.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from demo.tasks import ADAPTER_RULES, heldout_inputs
from producer import Producer
from schemas import JobRecord, JobStatus, Keys, codec
from tests.integration.serve.conftest import MAX_NEW_TOKENS, delete_prefix, e2e_settings
from workers import launch
from workers.serve import metrics as m
from workers.settings import WorkerSettings

APP = "metrics"
JOBS_PER_MODEL = 5
MODELS: list[str | None] = [*ADAPTER_RULES, None]
MAX_IN_FLIGHT = 8


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape() -> list[Sample]:
    """Every sample of this test's application, from every node's endpoint."""
    samples = []
    for url in launch.metrics_urls():
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("ray_loraq_") and s.labels.get("application") == APP:
                    samples.append(Sample(s.name, dict(s.labels), s.value))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def series(samples: list[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.name == name]


def scrape_until(check: Callable[[list[Sample]], bool], timeout_s: float = 30.0) -> list[Sample]:
    """Scrape until ``check`` holds (the report and export intervals must pass first)."""
    deadline = time.monotonic() + timeout_s
    samples = scrape()
    while not check(samples) and time.monotonic() < deadline:
        time.sleep(0.5)
        samples = scrape()
    return samples


@pytest.fixture(scope="module")
def metrics_app(ray_serve: str, redis_url: str) -> Iterator[launch.Running]:
    settings = e2e_settings(
        redis_url,
        app_name=APP,
        num_model_replicas=1,
        max_in_flight=MAX_IN_FLIGHT,
        metrics_interval_s=1.0,
        # Nothing is trimmed during the test, so the queue length is every entry added.
        trim_interval_s=3600.0,
    )
    running = launch.deploy(settings)
    yield running
    launch.shutdown(running)
    delete_prefix(redis_url, settings.prefix)


class Sampler:
    """Scrapes in the background while the jobs run."""

    def __init__(self) -> None:
        self.scrapes: list[list[Sample]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self.scrapes.append(scrape())


def engine_stats(running: launch.Running) -> dict[str, Any]:
    (stats,) = asyncio.run(launch.replica_stats(running.model, 1)).values()
    return stats


def run_jobs(settings: WorkerSettings, r: redis.Redis) -> dict[str, JobRecord]:
    """Every demo model's jobs, one for an unknown adapter and one that is not JSON."""
    jobs: list[dict[str, Any]] = [
        {"adapter": model, "prompt": prompt, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
        for prompt in heldout_inputs()[:JOBS_PER_MODEL]
        for model in MODELS
    ]
    with Producer.from_settings(settings) as producer:
        ids = producer.submit_many([*jobs, {"adapter": "no-such-adapter", "prompt": "x"}])
        ids.append(codec.as_text(r.xadd(Keys(settings.prefix).jobs, {"job": "{not json"})))
        return producer.wait_many(ids, timeout=180)


def test_metrics_count_the_jobs_run(metrics_app: launch.Running, r: redis.Redis) -> None:
    started = time.monotonic()
    settings = metrics_app.settings
    keys = Keys(settings.prefix)
    with Sampler() as sampler:
        records = run_jobs(settings, r)
    ran_s = time.monotonic() - started
    statuses = Counter(record.status for record in records.values())
    succeeded = JOBS_PER_MODEL * len(MODELS)
    assert statuses == {JobStatus.SUCCEEDED: succeeded, JobStatus.FAILED: 2}
    tokens = sum(rec.result.completion_tokens for rec in records.values() if rec.result)

    finished = "ray_loraq_jobs_finished_total"
    engine = engine_stats(metrics_app)
    samples = scrape_until(
        lambda s: (
            total(s, finished) == len(records)
            and total(s, "ray_loraq_generated_tokens_total") == tokens
            and total(s, "ray_loraq_batch_size_count") == engine["forward_passes"]
            and total(s, "ray_loraq_group_pending") == 0
            and total(s, "ray_loraq_jobs_in_flight") == 0
        )
    )
    print(
        f"\n{len(records)} jobs in {ran_s:.1f}s, {len(sampler.scrapes)} scrapes meanwhile; "
        f"metrics settled {time.monotonic() - started - ran_s:.1f}s later"
    )

    # Jobs by status, adapter and error type: exactly those run.
    by_labels = {
        (s.labels["status"], s.labels["adapter"], s.labels["error_type"]): s.value
        for s in series(samples, finished)
    }
    expected = {("succeeded", model or m.BASE_LABEL, ""): JOBS_PER_MODEL for model in MODELS}
    expected[("failed", m.UNKNOWN_LABEL, "unknown_adapter")] = 1
    expected[("failed", m.UNKNOWN_LABEL, "validation")] = 1
    assert by_labels == expected

    # Time in queue and generation time: one observation per generated job, by adapter.
    for name in ("ray_loraq_queue_seconds", "ray_loraq_generation_seconds"):
        for model in MODELS:
            adapter = model or m.BASE_LABEL
            assert total(samples, f"{name}_count", adapter=adapter) == JOBS_PER_MODEL
            inf = total(samples, f"{name}_bucket", adapter=adapter, le="+Inf")
            assert inf == JOBS_PER_MODEL
        assert total(samples, f"{name}_sum") > 0

    # Engine: passes, rows and adapters, as the replica counted them.
    passes = engine["forward_passes"]
    assert passes > 0
    assert total(samples, "ray_loraq_batch_size_sum") == engine["row_steps"]
    assert total(samples, "ray_loraq_adapters_per_batch_count") == passes
    single = total(samples, "ray_loraq_adapters_per_batch_bucket", le="1.5")
    assert passes - single == engine["multi_adapter_passes"]
    assert total(samples, "ray_loraq_generated_tokens_total") == engine["tokens_generated"]

    # Adapters: four of them through two slots load, evict and hit.
    loads = total(samples, "ray_loraq_adapter_loads_total")
    assert loads == engine["cache_loads"] >= len(ADAPTER_RULES)
    assert total(samples, "ray_loraq_adapter_evictions_total") == engine["cache_evictions"] >= 2
    assert total(samples, "ray_loraq_adapter_hits_total") == engine["cache_hits"] >= 1
    assert total(samples, "ray_loraq_adapter_load_seconds_count") == loads
    assert total(samples, "ray_loraq_adapters_loaded") == settings.max_adapters_per_replica

    # Queue gauges: every entry still in the stream, none waiting or held.
    assert total(samples, "ray_loraq_queue_length") == r.xlen(keys.jobs) == len(records)
    assert total(samples, "ray_loraq_group_lag") == 0
    assert total(samples, "ray_loraq_dead_letters") == r.xlen(keys.dead)
    (consumer,) = series(samples, "ray_loraq_jobs_in_flight")
    assert consumer.labels["consumer"] == f"{APP}-0"

    # While the jobs ran: every gauge within its bounds.
    during = [sample for scraped in sampler.scrapes for sample in scraped]
    for name, bound in (
        ("ray_loraq_group_lag", len(records)),
        ("ray_loraq_group_pending", len(records)),
        ("ray_loraq_queue_length", len(records)),
        ("ray_loraq_jobs_in_flight", MAX_IN_FLIGHT),
    ):
        assert all(0 <= s.value <= bound for s in series(during, name)), name
    rates = [s.value for s in series(during + samples, "ray_loraq_tokens_per_second")]
    assert rates and all(rate >= 0 for rate in rates)
    busiest = {
        name: max((s.value for s in series(during, name)), default=None)
        for name in ("ray_loraq_jobs_in_flight", "ray_loraq_group_pending", "ray_loraq_group_lag")
    }
    print(f"busiest during the run: {busiest}, tokens/s up to {max(rates):.0f}")
