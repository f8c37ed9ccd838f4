"""Fair shares between tenants on the served app: one tenant's flood against another's
trickle.

Tenant A submits ``--a-jobs`` jobs at once; then tenant B submits ``--b-jobs`` jobs, one
every ``--b-every-s`` seconds. Measured on the real JobConsumer (the scheduling window and
its fair order) in front of the queue bench's no-op model, slowed to a fixed time per job
so that the model, not the machine's load, sets the pace:

- B's p99 wait (``started_at - created_at`` of its records) beside B's p99 wait alone
  (the issue's target: at most 2x);
- A's jobs/s while B is idle (A's jobs that ended while B had nothing waiting or running,
  over that time) beside A's jobs/s alone (target: at least 0.95x);
- the same flood with B's jobs under A's tenant: what the fair order saves B.

The consumer must hold A's backlog claimed for B's jobs to be seen behind it
(``LORAQ_MAX_CLAIMED_JOBS``, ``--claimed``, default A's and B's jobs): a consumer claims
entries in stream order (docs/SERVING.md); its scheduler still looks at each tenant's
first ``LORAQ_SCHEDULE_WINDOW`` (256) jobs.

    python -m bench.tenants [--quick] [--a-jobs 5000] [--b-jobs 50] [--b-every-s 0.2]
        [--headroom N]

Writes bench/results/tenants.{json,md,png}.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    raise SystemExit("run as: python -m bench.tenants  (see the module docstring)")

import argparse
import asyncio
import os
import time
from typing import Any

import ray
from ray import serve

from bench.queue import NoopModel, bench_settings, clean
from bench.report import RESULTS, percentile, save, table
from producer import AsyncProducer
from producer.embedded import resolve_redis_url
from producer.following import parse_record
from producer.settings import DEFAULT_REDIS_URL
from schemas import JobRecord, JobStatus
from schemas.codec import as_text
from schemas.replicas import ConsumerHeartbeat
from workers import launch
from workers.app import CONSUMER_DEPLOYMENT, MODEL_DEPLOYMENT
from workers.engine.requests import GenerationOutput, GenerationRequest
from workers.serve.consumer_deployment import JobConsumer
from workers.settings import WorkerSettings

MAX_NEW_TOKENS = 16
SUBMIT_CHUNK = 500


class PacedModel(NoopModel):
    """The no-op model, taking ``job_ms`` per job: a fleet of fixed capacity."""

    job_s = 0.02

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        await asyncio.sleep(self.job_s)
        return await super().generate(request)


def deploy(settings: WorkerSettings, job_ms: float) -> None:
    """The JobConsumer of the real app in front of :class:`PacedModel`."""
    paced = type("PacedModel", (PacedModel,), {"job_s": job_ms / 1000})
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.model_num_cpus},
    )(paced)
    consumer = serve.deployment(
        name=CONSUMER_DEPLOYMENT,
        num_replicas=settings.num_consumer_replicas,
        ray_actor_options={"num_cpus": settings.consumer_num_cpus},
    )(JobConsumer)
    serve.run(
        consumer.bind(model.bind(), settings),
        name=settings.app_name,
        route_prefix=settings.http_route_prefix,
    )


def job(tenant: str | None, index: int) -> dict[str, Any]:
    return {
        "prompt": f"job {index}",
        "tenant": tenant,
        "params": {"max_new_tokens": MAX_NEW_TOKENS},
    }


async def flood(producer: AsyncProducer, tenant: str | None, count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, SUBMIT_CHUNK):
        chunk = [job(tenant, i) for i in range(start, min(count, start + SUBMIT_CHUNK))]
        ids += await producer.submit_many(chunk)
    return ids


async def trickle(
    producer: AsyncProducer, tenant: str | None, count: int, every_s: float
) -> list[str]:
    ids = []
    for index in range(count):
        ids.append(await producer.submit(**job(tenant, index)))
        await asyncio.sleep(every_s)
    return ids


async def drained(producer: AsyncProducer, timeout_s: float = 1800) -> None:
    """Until the consumer group has delivered and acknowledged every entry. (Waiting on
    thousands of jobs' event streams at once would load Redis, and so the queue.)"""
    keys = producer.keys
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = await producer.client.xinfo_groups(keys.jobs)
        group = next(g for g in groups if as_text(g["name"]) == keys.group)
        if group["pending"] == 0 and group.get("lag") == 0:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError("the queue did not drain")


async def window_waits(producer: AsyncProducer, settings: WorkerSettings) -> tuple[int, float]:
    """Tenant B's jobs started from the consumers' windows and their window waits, summed
    (from the consumers' heartbeats, a fresh one awaited): the scheduler's part of B's
    wait, apart from the queue machinery's."""
    await asyncio.sleep(settings.heartbeat_s * 1.5)
    beats = await producer.client.hgetall(producer.keys.consumers)
    figures = [
        ConsumerHeartbeat.model_validate_json(raw).tenants.get("B") for raw in beats.values()
    ]
    return (
        sum(f.started for f in figures if f),
        sum(f.wait_s_total for f in figures if f),
    )


async def records(producer: AsyncProducer, ids: list[str]) -> list[JobRecord]:
    ended: list[JobRecord] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        pipe = producer.client.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hgetall(producer.keys.job(job_id))
        replies = await pipe.execute()
        found = (parse_record(i, reply) for i, reply in zip(chunk, replies, strict=True))
        ended += [record for record in found if record is not None]
    bad = [r for r in ended if r.status is not JobStatus.SUCCEEDED]
    if bad or len(ended) != len(ids):
        raise RuntimeError(f"{len(ids) - len(ended) + len(bad)} jobs did not succeed")
    return ended


def waits_ms(ended: list[JobRecord]) -> list[float]:
    return [((r.started_at or 0) - (r.created_at or 0)) * 1000 for r in ended]


def jobs_per_s(ended: list[JobRecord]) -> float:
    first = min(r.created_at or 0 for r in ended)
    last = max(r.finished_at or 0 for r in ended)
    return len(ended) / (last - first)


def idle_rate(a: list[JobRecord], b: list[JobRecord]) -> tuple[float, float]:
    """A's jobs/s over the time B had nothing waiting or running, and that time (s)."""
    busy = sorted(((r.created_at or 0), (r.finished_at or 0)) for r in b)
    start = min(r.created_at or 0 for r in a)
    end = max(r.finished_at or 0 for r in a)
    idle: list[tuple[float, float]] = []
    cursor = start
    for begin, finish in busy:
        if begin > cursor:
            idle.append((cursor, min(begin, end)))
        cursor = max(cursor, finish)
    if cursor < end:
        idle.append((cursor, end))
    idle = [(s, e) for s, e in idle if e > s]
    seconds = sum(e - s for s, e in idle)
    done = sum(1 for r in a for s, e in idle if s <= (r.finished_at or 0) < e)
    return done / seconds if seconds else 0.0, seconds


async def scenario(
    settings: WorkerSettings, args: argparse.Namespace, *, a: bool, b: str | None
) -> dict[str, Any]:
    """One run: A's flood (when ``a``), then B's trickle as tenant ``b`` (when not None;
    ``"A"`` puts B's jobs under A's tenant)."""
    async with AsyncProducer.from_settings(settings) as producer:
        before = await window_waits(producer, settings)
        a_ids = await flood(producer, "A", args.a_jobs) if a else []
        b_ids = await trickle(producer, b, args.b_jobs, args.b_every_s) if b else []
        await drained(producer)
        a_done = await records(producer, a_ids) if a_ids else []
        b_done = await records(producer, b_ids) if b_ids else []
        after = await window_waits(producer, settings)
    row: dict[str, Any] = {}
    if b == "B":
        started, waited_s = (x - y for x, y in zip(after, before, strict=True))
        row["b_mean_window_wait_ms"] = waited_s / max(1, started) * 1000
    if a_done:
        row["a_jobs_per_s"] = jobs_per_s(a_done)
    if b_done:
        waits = waits_ms(b_done)
        row["b_p50_wait_ms"] = percentile(waits, 0.5)
        row["b_p99_wait_ms"] = percentile(waits, 0.99)
        # In submission order: with 50 jobs the p99 is about the second slowest, and
        # which of B's jobs waited longest (the first, behind the flood?) says why.
        row["b_waits_ms"] = waits
    if a_done and b_done:
        row["a_jobs_per_s_b_idle"], row["b_idle_s"] = idle_rate(a_done, b_done)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    redis_url, embedded = resolve_redis_url(os.environ.get("LORAQ_REDIS_URL"), DEFAULT_REDIS_URL)
    launch.allow_slow_proxy_start()
    ray.init(
        address="local",
        num_cpus=max(4, os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
    )
    settings = bench_settings(
        redis_url,
        "bench-tenants",
        args.in_flight,
        max_claimed_jobs=args.claimed,
        num_consumer_replicas=args.consumers,
        model_num_cpus=0.25,
        affinity_routing=False,
        heartbeat_s=1.0,
        tenant_headroom=args.headroom,
    )
    results: dict[str, Any] = {}
    try:
        deploy(settings, args.job_ms)
        runs = {
            "a_alone": {"a": True, "b": None},
            "b_alone": {"a": False, "b": "B"},
            "fair": {"a": True, "b": "B"},
            "one_tenant": {"a": True, "b": "A"},
        }
        for name, shape in runs.items():
            started = time.perf_counter()
            results[name] = asyncio.run(scenario(settings, args, **shape))
            print(f"{name}: {results[name]} ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        clean(redis_url, settings.prefix)
        if embedded is not None:
            embedded.stop()
    return results


def summary(results: dict[str, Any]) -> dict[str, float]:
    fair, alone = results["fair"], results
    return {
        "b_p99_wait_ratio": fair["b_p99_wait_ms"] / max(alone["b_alone"]["b_p99_wait_ms"], 1e-9),
        "a_idle_rate_ratio": fair["a_jobs_per_s_b_idle"] / alone["a_alone"]["a_jobs_per_s"],
    }


def worst(row: dict[str, Any]) -> str:
    return ", ".join(f"{wait:.0f}" for wait in sorted(row["b_waits_ms"], reverse=True)[:3])


def write(results: dict[str, Any], args: argparse.Namespace) -> None:
    figures = summary(results)
    rows = [
        {
            "figure": "B's p99 wait (ms)",
            "alone": f"{results['b_alone']['b_p99_wait_ms']:.0f}",
            "beside A": f"{results['fair']['b_p99_wait_ms']:.0f}",
            "ratio": f"{figures['b_p99_wait_ratio']:.2f} (target <= 2)",
            "one tenant": f"{results['one_tenant']['b_p99_wait_ms']:.0f}",
        },
        {
            "figure": "B's 3 longest waits (ms)",
            "alone": worst(results["b_alone"]),
            "beside A": worst(results["fair"]),
            "ratio": "",
            "one tenant": worst(results["one_tenant"]),
        },
        {
            "figure": "B's p50 wait (ms)",
            "alone": f"{results['b_alone']['b_p50_wait_ms']:.0f}",
            "beside A": f"{results['fair']['b_p50_wait_ms']:.0f}",
            "ratio": "",
            "one tenant": f"{results['one_tenant']['b_p50_wait_ms']:.0f}",
        },
        {
            "figure": "B's mean wait in the window (ms)",
            "alone": f"{results['b_alone']['b_mean_window_wait_ms']:.0f}",
            "beside A": f"{results['fair']['b_mean_window_wait_ms']:.0f}",
            "ratio": "",
            "one tenant": "",
        },
        {
            "figure": "A's jobs/s (beside A: while B idle)",
            "alone": f"{results['a_alone']['a_jobs_per_s']:.1f}",
            "beside A": f"{results['fair']['a_jobs_per_s_b_idle']:.1f}",
            "ratio": f"{figures['a_idle_rate_ratio']:.2f} (target >= 0.95)",
            "one tenant": f"{results['one_tenant']['a_jobs_per_s']:.1f}",
        },
    ]
    columns = {name: (lambda row, name=name: row[name]) for name in rows[0]}
    lines = [
        f"# Tenants: A floods {args.a_jobs} jobs, B sends {args.b_jobs} (one every "
        f"{args.b_every_s} s) ({os.cpu_count()} CPUs, {args.consumers} consumer(s), "
        f"{args.claimed} claimed, {args.in_flight} in flight, {args.headroom} of them "
        f"headroom, {args.job_ms} ms per job)",
        "",
        "alone: the tenant's jobs with nothing else queued; beside A: B's trickle behind "
        "A's flood, each its own tenant (A's jobs/s counted over the time B had nothing "
        "waiting or running); one tenant: the same flood with B's jobs under A's tenant "
        "(the order without fair shares). Wait: the record's started_at - created_at; "
        "in the window: from claim to start, the scheduler's part of it (the consumers' "
        "heartbeats). Timings on a shared, loaded machine: compare within one run only.",
        "",
        *table(columns, rows),
    ]
    save("tenants", {"args": vars(args), "results": results, "summary": figures}, lines)
    plot(results)


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    waits = [
        results["b_alone"]["b_p99_wait_ms"],
        results["fair"]["b_p99_wait_ms"],
        results["one_tenant"]["b_p99_wait_ms"],
    ]
    left.bar(["B alone", "B beside A", "one tenant"], waits, color=["grey", "tab:blue", "tab:red"])
    left.set_ylabel("B's p99 wait (ms)")
    left.set_yscale("log")
    rates = [results["a_alone"]["a_jobs_per_s"], results["fair"]["a_jobs_per_s_b_idle"]]
    right.bar(["A alone", "A while B idle"], rates, color=["grey", "tab:blue"])
    right.set_ylabel("A's jobs/s")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "tenants.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 10 jobs")
    parser.add_argument("--a-jobs", type=int, default=5000)
    parser.add_argument("--b-jobs", type=int, default=50)
    parser.add_argument("--b-every-s", type=float, default=0.2)
    parser.add_argument("--job-ms", type=float, default=400.0, help="model time per job")
    parser.add_argument("--in-flight", type=int, default=32, help="jobs a consumer runs")
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--claimed", type=int, default=0, help="default: A's jobs + B's")
    parser.add_argument(
        "--headroom",
        type=int,
        default=WorkerSettings.model_fields["tenant_headroom"].default,
        help="LORAQ_TENANT_HEADROOM: places kept for a tenant under its share",
    )
    args = parser.parse_args()
    if args.quick:
        args.a_jobs, args.b_jobs = min(args.a_jobs, 2000), min(args.b_jobs, 10)
    args.claimed = args.claimed or args.a_jobs + args.b_jobs
    write(run(args), args)


if __name__ == "__main__":
    main()
