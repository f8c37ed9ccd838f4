"""Many adapters through the queue: the scheduling window against FIFO dispatch.

Random rank-8 q/v LoRA adapters for the demo base model (``bench/adapter_kit.py``) are
registered at run time in ``{P}:adapters`` — 200 of them, then 1,000 — and the real app
(2 model replicas × 8 device slots, fractional CPUs sized for two cores) runs, through
the queue (``submit_many`` then ``wait_many``, 8 new tokens per job), in this order:

- Zipf(1.1) over 200 adapters (600 jobs), then over 1,000 adapters (1,000 jobs);
- uniform over 8 adapters that fit in the slots (1,000 jobs), 8 that no earlier workload
  used, so that they start cold;
- the base model only (1,000 jobs).

Each mode — the scheduling window on (the default settings) and off
(``schedule_window=0``, plain FIFO dispatch) — gets its own deployment and the same
seeded job sequences. Then the queue machinery's ceiling: the consumer in front of a
no-op model against calling that model's handle directly (``bench/queue.py``'s
:func:`~bench.queue.noop_ceiling`), once per mode.

    python -m bench.adapters [--quick] [--seed 0] [--noop-rounds 3] [--consumers 2]
    python -m bench.adapters --source s3 [--quick]   (see bench/adapter_sources.py)

``--consumers`` is the number of consumer replicas (``LORAQ_NUM_CONSUMER_REPLICAS``,
default 2: the slot lease keeps the slot rule for all of them together); they share
:data:`IN_FLIGHT` jobs in flight (``LORAQ_MAX_IN_FLIGHT`` each: their share), the
replicas' batches (2 × 16 rows), whatever their number.
``--quick`` is a smoke run (a tenth of the jobs, 40 and 200 adapters, one no-op round).
Writes bench/results/adapters.{json,md,png}; see :mod:`bench.adapters_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import serve

from bench.adapter_kit import adapter_names, generate_adapters
from bench.adapters_report import write
from bench.queue import clean, demo_jobs, noop_ceiling
from bench.served import (
    DEVICE_SLOTS,
    MAX_NEW_TOKENS,
    MODEL_REPLICAS,
    model_stats,
    submit_and_wait,
    timing,
)
from bench.workloads import Workload, floor, lru_misses, sequence
from producer import Producer
from producer.adapter_registrations import AdapterRegistrations
from producer.embedded import free_port, resolve_redis_url
from producer.settings import DEFAULT_REDIS_URL
from schemas import JobStatus, Keys
from workers import launch
from workers.settings import DEMO_DIR, WorkerSettings

WARMUP_JOBS = 32
# Jobs in flight over all consumers: what the 2 model replicas batch at once.
IN_FLIGHT = 32
# Engine counters summed over replicas as deltas per workload; the host-tier ones are
# read only where a build has them.
COUNTERS = (
    "cache_loads",
    "cache_evictions",
    "host_loads",
    "host_hits",
    "host_evictions",
    "in_use_evictions",
)


@dataclass(frozen=True)
class Mode:
    """A way to run the consumer: a name and the settings it overrides."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


# The window's own size and passover bound stay at their defaults when it is on.
MODES = (Mode("window on"), Mode("window off", {"schedule_window": 0}))


def plan(args: argparse.Namespace) -> list[Workload]:
    """The four workloads, in run order; ``--quick`` shrinks them for a smoke run."""
    scale = 10 if args.quick else 1
    small, large = (40, 200) if args.quick else (200, 1000)
    return [
        Workload(f"Zipf(1.1) over {small}", "zipf", 600 // scale, small, seed=args.seed),
        Workload(f"Zipf(1.1) over {large}", "zipf", 1000 // scale, large, seed=args.seed + 1),
        Workload("uniform over 8 that fit", "uniform", 1000 // scale, 8, seed=args.seed + 2),
        Workload("base model only", "base", 1000 // scale, seed=args.seed + 3),
    ]


def sequences(workloads: list[Workload], names: list[str]) -> dict[str, list[str | None]]:
    """Each workload's adapter per job; the 'fits' adapters are ones no Zipf job drew."""
    drawn: set[str | None] = set()
    out: dict[str, list[str | None]] = {}
    for workload in workloads:
        pool = (
            [name for name in names if name not in drawn] if workload.kind == "uniform" else names
        )
        out[workload.name] = sequence(workload, pool)
        drawn.update(out[workload.name])
    return out


def app_settings(
    redis_url: str, adapter_root: Path, http_port: int, mode: Mode, consumers: int = 1
) -> WorkerSettings:
    """The app on the demo model, sized for two cores, under a fresh key prefix.

    Only ``adapter_root`` is an adapter root; its adapters sit one level down, so the
    directory scan finds none and every one comes from a run-time registration.
    """
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "prefix": f"loraqbench:adapters{uuid.uuid4().hex[:10]}",
        "app_name": "bench-adapters",
        "http_route_prefix": "/bench-adapters",
        "http_port": http_port,
        "model": str(DEMO_DIR / "model"),
        "adapters": {},
        "adapter_dir": str(adapter_root),
        "num_model_replicas": MODEL_REPLICAS,
        "num_consumer_replicas": consumers,
        "max_adapters_per_replica": DEVICE_SLOTS,
        "model_num_cpus": 0.5,
        "consumer_num_cpus": 0.1,
        "max_batch_size": 16,
        "max_in_flight": max(1, IN_FLIGHT // consumers),
        "graceful_shutdown_timeout_s": 10.0,
        **mode.overrides,
    }
    return WorkerSettings(**values)


def scheduling_settings(settings: WorkerSettings) -> dict[str, Any]:
    """The window's settings as this build has them (``None``: the field does not exist)."""
    return {name: getattr(settings, name, None) for name in ("schedule_window", "max_passover_s")}


def consumer_stats(running: launch.Running) -> dict[str, Any]:
    """Each consumer's ``stats()`` by name (kept raw in the JSON: the window's depth and
    passover counters, where a build has them, are there)."""
    count = running.settings.num_consumer_replicas
    return asyncio.run(launch.replica_stats(running.consumer, count, key="consumer"))


def counter_deltas(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, float | None]:
    """Each of :data:`COUNTERS` summed over replicas, after minus before; ``None`` when no
    replica reports it."""
    deltas: dict[str, float | None] = {}
    for name in COUNTERS:
        values = [
            stats[name] - before.get(replica, {}).get(name, 0)
            for replica, stats in after.items()
            if stats.get(name) is not None
        ]
        deltas[name] = sum(values) if values else None
    return deltas


def rss_mib(pid: int) -> float | None:
    """Resident set size of process ``pid`` (VmRSS), or ``None`` when it is not on this
    machine (a replica on another node)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_workload(
    running: launch.Running, workload: Workload, adapters: list[str | None]
) -> dict[str, Any]:
    """One workload on the deployed app: throughput, latency, loads and memory."""
    before = model_stats(running)
    records, seconds = submit_and_wait(running.settings, adapters)
    after = model_stats(running)
    failed = [r for r in records if r.status is not JobStatus.SUCCEEDED]
    slots = MODEL_REPLICAS * DEVICE_SLOTS
    row: dict[str, Any] = {
        "workload": workload.name,
        "kind": workload.kind,
        "adapters": workload.adapters,
        "jobs": len(records),
        "failed": len(failed),
        "first_error": failed[0].error.model_dump() if failed and failed[0].error else None,
        "seconds": seconds,
        "jobs_per_s": len(records) / seconds,
        **timing(records),
        "floor": floor(adapters),
        "ideal_lru": lru_misses(adapters, slots),
        **counter_deltas(before, after),
        "rss_mib": {replica: rss_mib(stats["pid"]) for replica, stats in after.items()},
        "consumer_stats": consumer_stats(running),
    }
    print(
        f"  {workload.name}: {row['jobs_per_s']:.1f} jobs/s, p99 {row.get('p99_s', 0):.1f} s, "
        f"loads {row['cache_loads']} (floor {row['floor']}, LRU {row['ideal_lru']}), "
        f"{len(failed)} failed",
        flush=True,
    )
    return row


def register(settings: WorkerSettings, folders: dict[str, Path], names: list[str]) -> None:
    """Register ``names`` in ``{P}:adapters`` (those already there are left alone)."""
    with Producer.from_settings(settings) as producer:
        registrations = AdapterRegistrations(producer.client, Keys(settings.prefix))
        for name in names:
            registrations.add(name, str(folders[name]))


def run_mode(
    mode: Mode,
    settings: WorkerSettings,
    workloads: list[Workload],
    jobs: dict[str, list[str | None]],
    folders: dict[str, Path],
) -> list[dict[str, Any]]:
    """Deploy the app for ``mode``, warm it up, and run every workload on it in order."""
    started = time.perf_counter()
    running = launch.deploy(settings)
    print(f"{mode.name}: deployed in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    try:
        submit_and_wait(running.settings, [None] * WARMUP_JOBS)
        for workload in workloads:
            # Registered as each workload comes: the first Zipf one runs with 200 known,
            # the second with 1,000.
            names = {a for a in jobs[workload.name] if a}
            if workload.kind == "zipf":
                names.update(adapter_names(workload.adapters))
            register(running.settings, folders, sorted(names))
            row = run_workload(running, workload, jobs[workload.name])
            rows.append({"mode": mode.name, **row})
    finally:
        launch.shutdown(running)
        clean(running.settings.effective_redis_url, running.settings.prefix)
    return rows


def noop(redis_url: str, mode: Mode, args: argparse.Namespace) -> dict[str, Any]:
    """The no-op ceiling in ``mode``; a failure is reported, not raised, so that it does
    not cost the run's other figures."""
    compare_args = argparse.Namespace(concurrency=32, rounds=args.noop_rounds)
    jobs = demo_jobs(64 if args.quick else 200)
    try:
        return {"mode": mode.name, **noop_ceiling(redis_url, jobs, compare_args, **mode.overrides)}
    except Exception as exc:  # any failure: the report names it
        print(f"no-op ceiling, {mode.name}: failed: {exc!r}", flush=True)
        return {"mode": mode.name, "error": repr(exc)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, register, deploy and measure every mode; the results for the report."""
    redis_url, embedded = resolve_redis_url(os.environ.get("LORAQ_REDIS_URL"), DEFAULT_REDIS_URL)
    kinds = set(args.kinds.split(","))
    workloads = [w for w in plan(args) if w.kind in kinds]
    count = max(w.adapters for w in workloads)
    results: dict[str, Any] = {"rows": [], "noop": [], "modes": {}}
    with tempfile.TemporaryDirectory(prefix="loraq-bench-adapters-") as tmp:
        started = time.perf_counter()
        folders = generate_adapters(DEMO_DIR / "model", Path(tmp) / "pool", count, seed=args.seed)
        results["generate_s"] = time.perf_counter() - started
        print(f"{count} adapters generated in {results['generate_s']:.1f} s", flush=True)
        jobs = sequences(workloads, adapter_names(count))
        started_ray = launch.start_ray(app_settings(redis_url, Path(tmp), 0, MODES[0]))
        # Not 8000: other apps may serve on this machine. Picked once Ray runs, which
        # takes ports of its own as it starts.
        http_port = free_port()
        try:
            for mode in MODES:
                settings = app_settings(redis_url, Path(tmp), http_port, mode, args.consumers)
                results["modes"][mode.name] = scheduling_settings(settings)
                results["rows"] += run_mode(mode, settings, workloads, jobs, folders)
                if args.noop_rounds > 0:
                    results["noop"].append(noop(redis_url, mode, args))
        finally:
            if started_ray:
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
            if embedded is not None:
                embedded.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--seed", type=int, default=0, help="seed of adapters and job sequences")
    parser.add_argument(
        "--noop-rounds", type=int, default=None, help="no-op ceiling rounds (0: skip it)"
    )
    parser.add_argument(
        "--consumers", type=int, default=2, help="consumer replicas (LORAQ_NUM_CONSUMER_REPLICAS)"
    )
    parser.add_argument(
        "--kinds",
        default="zipf,uniform,base",
        help="workload kinds to run, comma-separated (a subset skips the report's targets)",
    )
    parser.add_argument(
        "--source",
        choices=("local", "s3"),
        default="local",
        help="s3: the object-store tier against local folders (bench/adapter_sources.py)",
    )
    args = parser.parse_args()
    if args.source == "s3":
        from bench import adapter_sources

        adapter_sources.write(adapter_sources.run(args))
        return
    if args.noop_rounds is None:
        args.noop_rounds = 1 if args.quick else 3
    started = time.perf_counter()
    results = run(args)
    results["meta"] = {
        "quick": args.quick,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "model_replicas": MODEL_REPLICAS,
        "consumer_replicas": args.consumers,
        "device_slots_per_replica": DEVICE_SLOTS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "noop_rounds": args.noop_rounds,
        "bench_s": time.perf_counter() - started,
    }
    if set(args.kinds.split(",")) >= {"zipf", "uniform", "base"} and args.noop_rounds > 0:
        write(results)
    else:  # the targets need every workload: a subset is printed, not saved
        print("a subset of the workloads: bench/results/ left as it was")
    print(f"bench took {results['meta']['bench_s']:.0f} s")


if __name__ == "__main__":
    main()
