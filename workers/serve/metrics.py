"""loraq's Prometheus metrics, recorded through Ray's metrics API.

Each Ray node's metrics agent exports them on the node's metrics port (``/metrics``),
next to Ray Serve's own metrics, under the ``ray_`` prefix Ray gives every name:
``loraq_jobs_finished`` is scraped as ``ray_loraq_jobs_finished_total``. So the metrics
of every replica reach Prometheus on any number of nodes, with no port of our own.
docs/METRICS.md lists them.

Metric objects are made on first use, in the replica's process. The engine's counters are
read from ``Backend.backend_stats()`` every ``metrics_interval_s`` and added as deltas; only the
per-pass histograms are recorded as passes run (a few microseconds each, on the model
thread, against milliseconds per pass).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from ray.util.metrics import Counter, Gauge, Histogram

from schemas import ErrorType, Job, JobError, JobResult, JobStatus
from schemas.replicas import BackendStats, DiskTierCounters
from schemas.tenants import TenantFigures
from workers.queue.store import Backlog
from workers.queue.tenant_labels import TenantLabels

Kind = Literal["counter", "gauge", "histogram"]
# The prefix Ray's exporter puts on every metric name.
EXPORT_PREFIX = "ray_"
# ``adapter`` label of base-model jobs, and of jobs whose adapter is unknown or that could
# not be parsed (one label for those: any name a client makes up would be a new series).
BASE_LABEL = "__base__"
UNKNOWN_LABEL = "__unknown__"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name before Ray's prefix, kind, meaning, labels, buckets."""

    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    def exported_names(self) -> tuple[str, ...]:
        """The series names Prometheus scrapes for this metric."""
        base = EXPORT_PREFIX + self.name
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_count", f"{base}_sum")
        return (base,)


def _counts(*tops: int) -> tuple[float, ...]:
    """Buckets for whole numbers: one per value up to 16, then wider ones up to ``tops``.

    Ray's exporter rebuilds a histogram's sum from bucket midpoints; with bounds halfway
    between whole numbers, the midpoint of a one-wide bucket is its value, so the sum
    of batch sizes is exact.
    """
    return tuple(k + 0.5 for k in range(17)) + tuple(top + 0.5 for top in tops)


SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
APP = ("application",)
REPLICA = ("application", "replica")

JOBS_FINISHED = MetricSpec(
    "loraq_jobs_finished",
    "counter",
    "Jobs this consumer gave a final status, by status, adapter and error type.",
    (*APP, "status", "adapter", "error_type"),
)
QUEUE_SECONDS = MetricSpec(
    "loraq_queue_seconds",
    "histogram",
    "Seconds from enqueue to the start of the generation, of jobs that generated.",
    (*APP, "adapter"),
    SECONDS,
)
GENERATION_SECONDS = MetricSpec(
    "loraq_generation_seconds",
    "histogram",
    "Seconds a job's generation took on the model, of jobs that generated.",
    (*APP, "adapter"),
    SECONDS,
)
JOBS_IN_FLIGHT = MetricSpec(
    "loraq_jobs_in_flight", "gauge", "Jobs a consumer replica holds now.", (*APP, "consumer")
)
WINDOW_DEPTH = MetricSpec(
    "loraq_window_depth",
    "gauge",
    "Claimed jobs waiting in a consumer's scheduling window.",
    (*APP, "consumer"),
)
WINDOW_OLDEST_WAIT = MetricSpec(
    "loraq_window_oldest_wait_seconds",
    "gauge",
    "How long the job waiting longest in a consumer's scheduling window has waited.",
    (*APP, "consumer"),
)
TENANT_WINDOW_DEPTH = MetricSpec(
    "loraq_tenant_window_depth",
    "gauge",
    "A tenant's jobs waiting in a consumer's scheduling window.",
    (*APP, "consumer", "tenant"),
)
TENANT_QUEUE_SECONDS = MetricSpec(
    "loraq_tenant_queue_seconds",
    "histogram",
    "Seconds from enqueue to the start of the generation, by tenant.",
    (*APP, "tenant"),
    SECONDS,
)
TENANT_TOKENS = MetricSpec(
    "loraq_tenant_tokens",
    "counter",
    "Tokens generated for a tenant's jobs (its share of the fleet).",
    (*APP, "tenant"),
)
QUEUE_LENGTH = MetricSpec("loraq_queue_length", "gauge", "Entries in {P}:jobs (XLEN).", APP)
GROUP_LAG = MetricSpec(
    "loraq_group_lag", "gauge", "Entries of {P}:jobs not yet delivered to any consumer.", APP
)
GROUP_PENDING = MetricSpec(
    "loraq_group_pending", "gauge", "Entries delivered and not yet acknowledged.", APP
)
DEAD_LETTERS = MetricSpec("loraq_dead_letters", "gauge", "Entries in {P}:dead (XLEN).", APP)
BATCH_SIZE = MetricSpec(
    "loraq_batch_size",
    "histogram",
    "Rows in each forward pass (prefill or decode step).",
    REPLICA,
    _counts(24, 32, 48, 64, 128, 256),
)
ADAPTERS_PER_BATCH = MetricSpec(
    "loraq_adapters_per_batch",
    "histogram",
    "Distinct adapters in each forward pass (the base model not counted).",
    REPLICA,
    _counts(32, 64),
)
ADAPTER_LOAD_SECONDS = MetricSpec(
    "loraq_adapter_load_seconds",
    "histogram",
    "Seconds to bring an adapter onto the device, evictions included.",
    REPLICA,
    SECONDS,
)
ADAPTER_READ_SECONDS = MetricSpec(
    "loraq_adapter_read_seconds",
    "histogram",
    "Seconds to read, validate and parse an adapter into host memory (loader thread).",
    REPLICA,
    SECONDS,
)
ADAPTER_HITS = MetricSpec(
    "loraq_adapter_hits", "counter", "Adapter requests served by a warm adapter.", REPLICA
)
ADAPTER_LOADS = MetricSpec("loraq_adapter_loads", "counter", "Adapters loaded.", REPLICA)
ADAPTER_LOAD_FAILURES = MetricSpec(
    "loraq_adapter_load_failures", "counter", "Adapter loads that failed.", REPLICA
)
ADAPTER_EVICTIONS = MetricSpec(
    "loraq_adapter_evictions", "counter", "Adapters evicted to make room.", REPLICA
)
HOST_HITS = MetricSpec(
    "loraq_adapter_host_hits", "counter", "Adapters found parsed in host memory.", REPLICA
)
HOST_LOADS = MetricSpec(
    "loraq_adapter_host_loads", "counter", "Adapters read from disk into host memory.", REPLICA
)
HOST_EVICTIONS = MetricSpec(
    "loraq_adapter_host_evictions",
    "counter",
    "Adapters dropped from host memory to fit its budget.",
    REPLICA,
)
HOST_BYTES = MetricSpec(
    "loraq_adapter_host_bytes", "gauge", "Bytes of parsed adapters in host memory.", REPLICA
)
DISK_HITS = MetricSpec(
    "loraq_adapter_disk_hits", "counter", "Remote adapters found on the node's disk.", REPLICA
)
DISK_MISSES = MetricSpec(
    "loraq_adapter_disk_misses", "counter", "Remote adapters not on the node's disk.", REPLICA
)
DISK_DOWNLOADS = MetricSpec(
    "loraq_adapter_downloads", "counter", "Remote adapter folders downloaded.", REPLICA
)
DISK_DOWNLOAD_BYTES = MetricSpec(
    "loraq_adapter_download_bytes", "counter", "Bytes of remote adapters downloaded.", REPLICA
)
DISK_DOWNLOAD_FAILURES = MetricSpec(
    "loraq_adapter_download_failures", "counter", "Adapter downloads given up on.", REPLICA
)
DISK_DOWNLOAD_SECONDS = MetricSpec(
    "loraq_adapter_download_seconds", "counter", "Seconds spent downloading adapters.", REPLICA
)
DISK_EVICTIONS = MetricSpec(
    "loraq_adapter_disk_evictions", "counter", "Disk tier entries deleted for room.", REPLICA
)
DISK_BYTES = MetricSpec(
    "loraq_adapter_disk_bytes", "gauge", "Bytes of adapters on the node's disk tier.", REPLICA
)
MODEL_THREAD_READS = MetricSpec(
    "loraq_adapter_model_thread_reads",
    "counter",
    "Adapter folders read on the model thread (PEFT loads of adapters that do not stack).",
    REPLICA,
)
IN_USE_EVICTIONS = MetricSpec(
    "loraq_adapter_in_use_evictions",
    "counter",
    "Adapters taken off the device while a row used them (a bug if ever above 0).",
    REPLICA,
)
ADAPTERS_REMOVED = MetricSpec(
    "loraq_adapters_removed",
    "counter",
    "Run-time registrations removed and freed from the replica.",
    REPLICA,
)
ADAPTERS_LOADED = MetricSpec(
    "loraq_adapters_loaded", "gauge", "Adapters on the replica's device now.", REPLICA
)
GENERATED_TOKENS = MetricSpec(
    "loraq_generated_tokens", "counter", "Tokens generated (queue and HTTP).", REPLICA
)
TOKENS_PER_SECOND = MetricSpec(
    "loraq_tokens_per_second",
    "gauge",
    "Tokens generated per second over the last metrics interval.",
    REPLICA,
)

SPECS = (
    JOBS_FINISHED,
    QUEUE_SECONDS,
    GENERATION_SECONDS,
    JOBS_IN_FLIGHT,
    WINDOW_DEPTH,
    WINDOW_OLDEST_WAIT,
    TENANT_WINDOW_DEPTH,
    TENANT_QUEUE_SECONDS,
    TENANT_TOKENS,
    QUEUE_LENGTH,
    GROUP_LAG,
    GROUP_PENDING,
    DEAD_LETTERS,
    BATCH_SIZE,
    ADAPTERS_PER_BATCH,
    ADAPTER_LOAD_SECONDS,
    ADAPTER_READ_SECONDS,
    ADAPTER_HITS,
    ADAPTER_LOADS,
    ADAPTER_LOAD_FAILURES,
    ADAPTER_EVICTIONS,
    HOST_HITS,
    HOST_LOADS,
    HOST_EVICTIONS,
    HOST_BYTES,
    DISK_HITS,
    DISK_MISSES,
    DISK_DOWNLOADS,
    DISK_DOWNLOAD_BYTES,
    DISK_DOWNLOAD_FAILURES,
    DISK_DOWNLOAD_SECONDS,
    DISK_EVICTIONS,
    DISK_BYTES,
    MODEL_THREAD_READS,
    IN_USE_EVICTIONS,
    ADAPTERS_REMOVED,
    ADAPTERS_LOADED,
    GENERATED_TOKENS,
    TOKENS_PER_SECOND,
)
# Counters of the disk tier (:class:`DiskTierCounters`) and the metric each one feeds.
DISK_COUNTERS = {
    "hits": DISK_HITS,
    "misses": DISK_MISSES,
    "downloads": DISK_DOWNLOADS,
    "download_bytes": DISK_DOWNLOAD_BYTES,
    "download_failures": DISK_DOWNLOAD_FAILURES,
    "download_s_total": DISK_DOWNLOAD_SECONDS,
    "evictions": DISK_EVICTIONS,
}
# Counters of :class:`BackendStats` and the metric each one feeds.
ENGINE_COUNTERS = {
    "cache_hits": ADAPTER_HITS,
    "cache_loads": ADAPTER_LOADS,
    "cache_load_failures": ADAPTER_LOAD_FAILURES,
    "cache_evictions": ADAPTER_EVICTIONS,
    "host_hits": HOST_HITS,
    "host_loads": HOST_LOADS,
    "host_evictions": HOST_EVICTIONS,
    "model_thread_disk_reads": MODEL_THREAD_READS,
    "in_use_evictions": IN_USE_EVICTIONS,
    "adapters_removed": ADAPTERS_REMOVED,
    "tokens_generated": GENERATED_TOKENS,
}


@functools.cache
def counter(spec: MetricSpec) -> Counter:
    """This process's Ray counter for ``spec``."""
    return Counter(spec.name, description=spec.description, tag_keys=spec.tags)


@functools.cache
def gauge(spec: MetricSpec) -> Gauge:
    """This process's Ray gauge for ``spec``."""
    return Gauge(spec.name, description=spec.description, tag_keys=spec.tags)


@functools.cache
def histogram(spec: MetricSpec) -> Histogram:
    """This process's Ray histogram for ``spec``."""
    boundaries = list(spec.boundaries)
    return Histogram(spec.name, spec.description, boundaries=boundaries, tag_keys=spec.tags)


def adapter_label(job: Job | None, error: JobError | None) -> str:
    """The ``adapter`` label of a finished job (``job`` ``None``: it could not be parsed)."""
    if job is None or (error is not None and error.type is ErrorType.UNKNOWN_ADAPTER):
        return UNKNOWN_LABEL
    return job.adapter_name or BASE_LABEL


def counter_deltas(
    previous: BaseModel,
    current: BaseModel,
    counters: Mapping[str, MetricSpec] = ENGINE_COUNTERS,
) -> dict[str, float]:
    """How much each of ``counters`` (fields of the record) grew since ``previous`` (a
    record of zeros before the first read)."""
    return {stat: getattr(current, stat) - getattr(previous, stat) for stat in counters}


class ConsumerMetrics:
    """The metrics one JobConsumer replica records: its jobs, and the queue's backlog.

    ``labels`` picks the ``tenant`` label (capped; the consumer's window uses the same, so
    that its gauges and these counters agree)."""

    def __init__(self, application: str, consumer: str, labels: TenantLabels | None = None) -> None:
        self._app = {"application": application}
        self._consumer = {**self._app, "consumer": consumer}
        self.labels = labels if labels is not None else TenantLabels()

    def job_finished(
        self,
        job: Job | None,
        status: JobStatus,
        *,
        result: JobResult | None,
        error: JobError | None,
    ) -> None:
        """Count a final status this consumer stored, and the job's timings."""
        adapter = adapter_label(job, error)
        tags = {
            **self._app,
            "status": status.value,
            "adapter": adapter,
            "error_type": error.type.value if error else "",
        }
        counter(JOBS_FINISHED).inc(1, tags=tags)
        timings = result.timings if result is not None else None
        if result is None or timings is None:
            return
        by_tenant = {**self._app, "tenant": self.labels.label(job.tenant if job else None)}
        if result.completion_tokens:
            counter(TENANT_TOKENS).inc(result.completion_tokens, tags=by_tenant)
        if timings.generation_ms is None or timings.queue_ms is None:
            return  # it never reached the model
        by_adapter = {**self._app, "adapter": adapter}
        # Enqueue time is Redis's clock (the entry id), start time the consumer's: they may
        # disagree a little.
        queue_s = max(0.0, timings.queue_ms / 1000)
        histogram(QUEUE_SECONDS).observe(queue_s, tags=by_adapter)
        histogram(TENANT_QUEUE_SECONDS).observe(queue_s, tags=by_tenant)
        histogram(GENERATION_SECONDS).observe(timings.generation_ms / 1000, tags=by_adapter)

    def report(
        self,
        backlog: Backlog,
        in_flight: int,
        *,
        window_depth: int,
        window_oldest_s: float,
        tenants: Mapping[str, TenantFigures],
    ) -> None:
        """Set the queue gauges (every consumer replica reports the same queue) and this
        consumer's in-flight and window gauges, the window's per tenant too (``tenants``:
        by label, every label given out so far, so a gauge goes back to 0)."""
        gauge(QUEUE_LENGTH).set(backlog.length, tags=self._app)
        gauge(GROUP_PENDING).set(backlog.pending, tags=self._app)
        gauge(DEAD_LETTERS).set(backlog.dead_letters, tags=self._app)
        if backlog.lag is not None:
            gauge(GROUP_LAG).set(backlog.lag, tags=self._app)
        gauge(JOBS_IN_FLIGHT).set(in_flight, tags=self._consumer)
        gauge(WINDOW_DEPTH).set(window_depth, tags=self._consumer)
        gauge(WINDOW_OLDEST_WAIT).set(window_oldest_s, tags=self._consumer)
        for tenant, figures in tenants.items():
            gauge(TENANT_WINDOW_DEPTH).set(
                figures.waiting, tags={**self._consumer, "tenant": tenant}
            )


class ModelMetrics:
    """The metrics of one LoRAModel replica; the engine's observer (see ``Backend.observe``)."""

    def __init__(self, application: str, replica: str) -> None:
        self._tags = {"application": application, "replica": replica}
        self._batch_size = histogram(BATCH_SIZE)
        self._adapters_per_batch = histogram(ADAPTERS_PER_BATCH)
        # Zeros until the first report: that one adds all the counters have.
        self._last = BackendStats()
        self._last_disk = DiskTierCounters()
        self._last_at = time.monotonic()

    def forward_pass(self, rows: int, adapters: int) -> None:
        """Model thread: record one pass."""
        self._batch_size.observe(rows, tags=self._tags)
        self._adapters_per_batch.observe(adapters, tags=self._tags)

    def adapter_loaded(self, seconds: float) -> None:
        """Model thread: record one adapter load."""
        histogram(ADAPTER_LOAD_SECONDS).observe(seconds, tags=self._tags)

    def adapter_read(self, seconds: float) -> None:
        """Loader thread: record one read of an adapter into host memory."""
        histogram(ADAPTER_READ_SECONDS).observe(seconds, tags=self._tags)

    def report(self, stats: BackendStats, now: float, *, disk: DiskTierCounters) -> None:
        """Add what the backend's counters ``stats`` and the disk tier's grew by; set the
        gauges."""
        deltas = counter_deltas(self._last, stats)
        self._add(deltas, ENGINE_COUNTERS)
        self._add(counter_deltas(self._last_disk, disk, DISK_COUNTERS), DISK_COUNTERS)
        self._last_disk = disk
        gauge(DISK_BYTES).set(disk.bytes_used, tags=self._tags)
        elapsed_s = now - self._last_at
        if elapsed_s > 0:
            rate = deltas["tokens_generated"] / elapsed_s
            gauge(TOKENS_PER_SECOND).set(rate, tags=self._tags)
        gauge(ADAPTERS_LOADED).set(stats.adapters_loaded, tags=self._tags)
        gauge(HOST_BYTES).set(stats.host_bytes, tags=self._tags)
        self._last, self._last_at = stats, now

    def _add(self, deltas: Mapping[str, float], specs: Mapping[str, MetricSpec]) -> None:
        for stat, delta in deltas.items():
            if delta > 0:  # Ray's counters take positive steps only
                counter(specs[stat]).inc(delta, tags=self._tags)
