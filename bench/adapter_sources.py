"""Adapters from object storage against the same adapters in local folders, served.

    python -m bench.adapters --source s3 [--quick] [--seed 0]

Small random adapters for the demo base (``bench/adapter_kit.py``: rank 8 on q/v),
10,000 of them (1,000 with ``--quick``), are written to a folder and put in an
S3-compatible server over HTTP (moto's ``moto_server``, started here on a free port;
``AWS_ENDPOINT_URL`` and test credentials go to the workers' environment). One seeded
Zipf(1.0) sequence of 2,000 jobs (400) over them runs on three fresh deployments of the
real app (2 model replicas × 8 device slots), in this order:

- ``local``: the folder as ``LORAQ_ADAPTER_DIR`` (the baseline);
- ``s3 cold``: ``LORAQ_ADAPTER_SOURCE=s3://…`` with an empty node disk cache;
- ``s3 warm``: the same source and the disk cache the cold run filled (new replicas:
  their host and device tiers start cold, as after a restart).

It reports jobs/s and the ratios to ``local``, the downloads against the distinct
adapters used, the cold cost of each tier from the replicas' counters: object store
→ disk (a download), disk → host memory (a read), host → device slot (a copy), and the
requests the S3 server answered during each run, from its request log (listings,
``HEAD``s, ``GET``s, and per second), and the CPU time the server took meanwhile (it
shares the machine's cores with the app, which a real object store does not).
Writes bench/results/adapter_sources.{json,md,png}. ``--quick``: 1,000 adapters, 400 jobs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import ray
from ray import serve

from bench import s3_server
from bench.adapter_kit import generate_adapters
from bench.queue import clean
from bench.report import RESULTS, save, table
from bench.served import DEVICE_SLOTS, MODEL_REPLICAS, model_stats, submit_and_wait, timing
from bench.workloads import Workload, sequence
from producer.embedded import free_port, resolve_redis_url
from producer.settings import DEFAULT_REDIS_URL
from schemas import JobStatus
from workers import launch
from workers.serve.start_failure import StartFailed
from workers.settings import DEMO_DIR, WorkerSettings

RUNS = ("local", "s3 cold", "s3 warm")


def start_s3(port: int, log: Path) -> subprocess.Popen[bytes]:
    """moto's S3 server on ``port``, its request log in ``log``; the workers' credential
    chain pointed at it."""
    server = s3_server.spawn(port, log)
    url = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    s3_server.wait_until_up(url)
    return server


def upload(folders: dict[str, Path], bucket: str) -> float:
    """Every adapter under ``s3://bucket/adapters/NAME/`` (16 at a time); seconds taken."""
    import boto3

    client = boto3.client("s3")  # boto3's clients are thread-safe
    client.create_bucket(Bucket=bucket)

    def put(item: tuple[str, Path]) -> None:
        name, folder = item
        for path in folder.iterdir():
            key = f"adapters/{name}/{path.name}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for index, _ in enumerate(pool.map(put, folders.items())):
            if index % 1000 == 999:
                print(f"  uploaded {index + 1} of {len(folders)}", flush=True)
    return time.perf_counter() - started


def run_settings(redis_url: str, http_port: int, **adapters: Any) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_url,
        prefix=f"loraqbench:sources{uuid.uuid4().hex[:10]}",
        app_name="bench-sources",
        http_route_prefix="/bench-sources",
        http_port=http_port,
        model=str(DEMO_DIR / "model"),
        adapters={},
        num_model_replicas=MODEL_REPLICAS,
        max_adapters_per_replica=DEVICE_SLOTS,
        model_num_cpus=0.5,
        consumer_num_cpus=0.1,
        max_batch_size=16,
        max_in_flight=32,
        graceful_shutdown_timeout_s=10.0,
        **adapters,
    )


def tier_costs(stats: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Mean cold cost of each tier, in ms, from the replicas' counters."""

    def mean(total: float, count: float) -> float | None:
        return total / count if count else None

    disk = [replica.get("disk", {}) for replica in stats.values()]
    return {
        "object_store_ms": mean(
            1000 * sum(d.get("download_s_total", 0.0) for d in disk),
            sum(d.get("downloads", 0) for d in disk),
        ),
        "disk_to_host_ms": mean(
            sum(s.get("host_load_ms_total", 0.0) for s in stats.values()),
            sum(s.get("host_loads", 0) for s in stats.values()),
        ),
        "host_to_device_ms": mean(
            sum(s.get("device_copy_ms_total", 0.0) for s in stats.values()),
            sum(s.get("device_copies", 0) for s in stats.values()),
        ),
    }


def store_requests(log: Path, start: int, seconds: float) -> dict[str, float]:
    """The S3 server's requests logged past byte ``start`` of ``log``, by kind: listings
    (a ``GET`` of a bucket with a query), ``HEAD``s, object ``GET``s; and each per
    second over ``seconds``."""
    with log.open("rb") as lines:
        lines.seek(start)
        counts = s3_server.request_counts(lines.read().decode(errors="replace"))
    return {**counts, **{f"{kind}_per_s": n / seconds for kind, n in counts.items()}}


def cpu_seconds(process: psutil.Process) -> float:
    """The CPU time ``process`` has used so far (user and system)."""
    times = process.cpu_times()
    return float(times.user + times.system)


def run_one(
    name: str,
    settings: WorkerSettings,
    adapters: list[str | None],
    log: Path,
    server: psutil.Process,
) -> dict[str, Any]:
    """Deploy, warm up on the base model, run the sequence, read the counters, the S3
    server's requests during the run and the CPU time it took (on these same cores)."""
    running = launch.deploy(settings)
    try:
        submit_and_wait(running.settings, [None] * 16)
        start, cpu_before = log.stat().st_size, cpu_seconds(server)
        records, seconds = submit_and_wait(running.settings, adapters)
        store_cpu_s = cpu_seconds(server) - cpu_before
        requests = store_requests(log, start, seconds)
        stats = model_stats(running)
    finally:
        launch.shutdown(running)
        clean(settings.effective_redis_url, settings.prefix)
    disk = [replica.get("disk", {}) for replica in stats.values()]
    row = {
        "run": name,
        "jobs": len(records),
        "failed": sum(r.status is not JobStatus.SUCCEEDED for r in records),
        "seconds": seconds,
        "jobs_per_s": len(records) / seconds,
        **timing(records),
        "distinct_adapters": len(set(adapters)),
        "downloads": sum(d.get("downloads", 0) for d in disk),
        "disk_hits": sum(d.get("hits", 0) for d in disk),
        "in_use_evictions": sum(s.get("in_use_evictions", 0) for s in stats.values()),
        **tier_costs(stats),
        "store_requests": requests,
        "store_cpu_s": store_cpu_s,
        # The part of the machine's CPU time during the run that the S3 server took.
        "store_cpu_share": store_cpu_s / (seconds * (os.cpu_count() or 1)),
    }
    print(
        f"{name}: {row['jobs_per_s']:.1f} jobs/s, {row['downloads']} downloads for "
        f"{row['distinct_adapters']} adapters, {row['failed']} failed; S3 requests "
        f"{requests['listings']} listings ({requests['listings_per_s']:.1f}/s), "
        f"{requests['heads']} HEADs ({requests['heads_per_s']:.1f}/s), {requests['gets']} GETs;"
        f" the S3 server used {store_cpu_s:.1f} CPU s",
        flush=True,
    )
    return row


def start_ray(settings: WorkerSettings, tries: int = 3) -> bool:
    """:func:`launch.start_ray`, tried again when Ray's node does not start in time."""
    for attempt in range(tries):
        try:
            return launch.start_ray(settings)
        except StartFailed as exc:
            if attempt + 1 == tries:
                raise
            print(f"Ray did not start ({exc}); trying again", flush=True)
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> dict[str, Any]:
    count, jobs = (1_000, 400) if args.quick else (10_000, 2_000)
    redis_url, embedded = resolve_redis_url(os.environ.get("LORAQ_REDIS_URL"), DEFAULT_REDIS_URL)
    work = Path(tempfile.mkdtemp(prefix="loraq-bench-sources-"))
    log = work / "s3-requests.log"
    s3 = start_s3(free_port(), log)
    server = psutil.Process(s3.pid)
    started_ray = False
    try:
        # One local Ray for the three deployments (its workers get the S3 server's
        # address from this environment), started before the upload: on a loaded machine
        # Ray's start may time out, and is tried again.
        started_ray = start_ray(run_settings(redis_url, 0))
        started = time.perf_counter()
        folders = generate_adapters(DEMO_DIR / "model", work / "adapters", count, seed=args.seed)
        print(f"{count} adapters written in {time.perf_counter() - started:.0f} s", flush=True)
        bucket = f"loraq-bench-{uuid.uuid4().hex[:8]}"
        upload_s = upload(folders, bucket)
        workload = Workload("zipf", "zipf", jobs, count, zipf_s=1.0, seed=args.seed)
        adapters = sequence(workload, sorted(folders))
        port = free_port()
        source = {"adapter_dir": None, "adapter_source": f"s3://{bucket}/adapters"}
        cache = str(work / "disk-tier")
        rows = [
            run_one(
                "local",
                run_settings(redis_url, port, adapter_dir=str(work / "adapters")),
                adapters,
                log,
                server,
            ),
            run_one(
                "s3 cold",
                run_settings(redis_url, port, **source, adapter_disk_cache_dir=cache),
                adapters,
                log,
                server,
            ),
            run_one(
                "s3 warm",
                run_settings(redis_url, port, **source, adapter_disk_cache_dir=cache),
                adapters,
                log,
                server,
            ),
        ]
    finally:
        if started_ray:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
        s3.terminate()
        shutil.rmtree(work, ignore_errors=True)
        if embedded is not None:
            embedded.stop()
    local = rows[0]["jobs_per_s"]
    for row in rows:
        row["ratio_to_local"] = row["jobs_per_s"] / local
    return {
        "adapters": count,
        "jobs": jobs,
        "upload_s": upload_s,
        "rows": rows,
        "meta": {"quick": args.quick, "seed": args.seed, "cpus": os.cpu_count()},
    }


def write(results: dict[str, Any]) -> None:
    """JSON, the markdown table and a bar chart of jobs/s per run."""

    def num(key: str, digits: int = 1) -> Any:
        return lambda row: "–" if row.get(key) is None else f"{row[key]:.{digits}f}"

    def requests(kind: str) -> Any:
        def cell(row: dict[str, Any]) -> str:
            counted = row.get("store_requests")
            if not counted:
                return "–"
            return f"{counted[kind]:,} ({counted[kind + '_per_s']:.1f})"

        return cell

    lines = [
        f"{results['jobs']} jobs, Zipf(1.0) over {results['adapters']} adapters "
        f"(uploaded in {results['upload_s']:.0f} s)",
        "",
        *table(
            {
                "run": lambda row: str(row["run"]),
                "jobs/s": num("jobs_per_s"),
                "÷ local": num("ratio_to_local", 2),
                "p99 s": num("p99_s"),
                "adapters used": lambda row: str(row["distinct_adapters"]),
                "downloads": lambda row: str(row["downloads"]),
                "object store → disk ms": num("object_store_ms"),
                "disk → host ms": num("disk_to_host_ms"),
                "host → device ms": num("host_to_device_ms", 2),
                "listings (/s)": requests("listings"),
                "HEADs (/s)": requests("heads"),
                "S3 server CPU s (share)": lambda row: (
                    f"{row['store_cpu_s']:.1f} ({row['store_cpu_share']:.0%})"
                ),
                "failed": lambda row: str(row["failed"]),
                "in-use evictions": lambda row: str(row["in_use_evictions"]),
            },
            results["rows"],
        ),
    ]
    save("adapter_sources", results, lines)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar([row["run"] for row in results["rows"]], [r["jobs_per_s"] for r in results["rows"]])
    axis.set_ylabel("jobs/s")
    axis.set_title(f"Zipf(1.0) over {results['adapters']} adapters, {results['jobs']} jobs")
    figure.tight_layout()
    figure.savefig(RESULTS / "adapter_sources.png", dpi=120)
