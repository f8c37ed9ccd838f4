"""The queue path against calling the LoRAModel handle directly: jobs/s and added latency.

Both paths run the same jobs on the same deployed engine with the same number of jobs in
flight (a closed loop of ``--concurrency`` clients): the direct path awaits
``LoRAModel.generate`` through a Serve handle (by value, the consumer's transport); the
queue path submits each job to Redis with the producer and waits for its final status,
so it pays for the stream, the consumer, the Lua scripts, the streamed chunks and the
wait. A second pair of runs swaps
the model for a no-op deployment, which shows the ceiling of the queue machinery itself.
A last run puts the no-op model's jobs through a Redis server the bench starts on a free
port (nothing else talks to it) and reads what each job cost that one shard: Redis
commands (``INFO commandstats`` deltas) and Redis CPU time (:mod:`bench.queue_shard`).

    python -m bench.queue [--jobs 200] [--rounds 3] [--concurrency 32] [--shard-jobs 2000]

Writes bench/results/queue.{json,md,png} and queue_shard.png. (Run it with ``-m``: a
script named queue.py run by path would shadow the standard library's ``queue`` module.)
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    raise SystemExit("run as: python -m bench.queue  (see the module docstring)")

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import ray
import redis
from ray import serve

from bench.queue_shard import ShardProbe
from bench.report import RESULTS, Row, percentile, save, table
from demo.tasks import ADAPTER_RULES, heldout_inputs
from producer import AsyncProducer
from producer.embedded import EmbeddedRedis, resolve_redis_url
from producer.settings import DEFAULT_REDIS_URL
from schemas import GenerationParams, JobStatus
from workers import launch
from workers.app import CONSUMER_DEPLOYMENT, MODEL_DEPLOYMENT
from workers.engine.requests import GenerationOutput, GenerationRequest, TextDelta
from workers.serve.consumer_deployment import JobConsumer
from workers.serve.stream_groups import Batch, StreamGroups
from workers.settings import WorkerSettings

MAX_NEW_TOKENS = 24
# Streamed chunks per job in the one-shard runs: the cost of a job, and of each chunk.
SHARD_CHUNKS = (1, 8)
Job = tuple[str | None, str]


@dataclass
class Measure:
    """One path's run: throughput and per-job latency (ms) percentiles."""

    jobs: int
    seconds: float
    jobs_per_s: float
    p50_ms: float
    p99_ms: float


class NoopModel:
    """A model deployment that answers at once: the queue's own ceiling. It serves the
    consumer's grouped calls as LoRAModel does (:class:`StreamGroups`), streaming each
    answer in ``chunks`` pieces ``chunk_interval_s`` apart (as a model's chunks come, so
    that the consumer appends each to Redis on its own)."""

    def __init__(self, chunks: int = 1, chunk_interval_s: float = 0.0) -> None:
        self.replica = serve.get_replica_context().replica_tag
        self.groups = StreamGroups()
        self.chunks = chunks
        self.chunk_interval_s = chunk_interval_s

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        text = request.prompt or ""
        return GenerationOutput(
            text, "stop", len(text), len(text), request.adapter, 0.0, self.replica
        )

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[TextDelta | GenerationOutput]:
        # The prompt once per chunk: every job streams exactly ``chunks`` chunks.
        output = await self.generate(request)
        for chunk in range(self.chunks):
            if chunk:
                await asyncio.sleep(self.chunk_interval_s)
            yield TextDelta(output.text)
        output.text *= self.chunks
        yield output

    async def stream_many(
        self, requests: list[GenerationRequest], call_id: str, target_replica: str | None = None
    ) -> AsyncIterator[str | Batch]:
        streams = [self.stream(request) for request in requests]
        async for message in self.groups.run(call_id, self.replica, streams):
            yield message

    async def cancel(self, call_id: str, index: int, target_replica: str | None = None) -> bool:
        return self.groups.cancel(call_id, index)


async def closed_loop(
    jobs: list[Job], concurrency: int, run_one: Callable[[Job], Awaitable[None]]
) -> Measure:
    """Run ``jobs`` with ``concurrency`` of them in flight at any time."""
    todo = iter(jobs)
    latencies: list[float] = []

    async def client() -> None:
        for job in todo:
            started = time.perf_counter()
            await run_one(job)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return Measure(
        len(jobs),
        seconds,
        len(jobs) / seconds,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )


def request_of(job: Job) -> GenerationRequest:
    adapter, prompt = job
    params = GenerationParams(max_new_tokens=MAX_NEW_TOKENS)
    return GenerationRequest(adapter, prompt, params=params, request_id=uuid.uuid4().hex)


async def direct(handle: Any, jobs: list[Job], concurrency: int, *, affinity: bool) -> Measure:
    # The transport the consumer uses too (by value, over Serve's gRPC): the comparison
    # is then of the queue alone.
    handle = handle.options(_by_reference=False)

    async def run_one(job: Job) -> None:
        target = handle.options(multiplexed_model_id=job[0]) if affinity and job[0] else handle
        await target.generate.remote(request_of(job))

    return await closed_loop(jobs, concurrency, run_one)


async def queued(settings: WorkerSettings, jobs: list[Job], concurrency: int) -> Measure:
    producer = AsyncProducer.from_settings(settings)

    async def run_one(job: Job) -> None:
        job_id = await producer.submit(
            job[1], adapter=job[0], params={"max_new_tokens": MAX_NEW_TOKENS}
        )
        record = await producer.wait(job_id, timeout=300)
        if record.status is not JobStatus.SUCCEEDED:
            raise RuntimeError(f"job {job_id} ended {record.status.value}: {record.error}")

    try:
        return await closed_loop(jobs, concurrency, run_one)
    finally:
        await producer.aclose()


async def queued_bulk(settings: WorkerSettings, jobs: list[Job]) -> float:
    """Jobs/s of the queue used in bulk: all jobs submitted at once, then all awaited.

    The consumer's in-flight bound (``max_in_flight``, set to the same concurrency) is then
    what keeps that many jobs at the engine; the client costs little.
    """
    async with AsyncProducer.from_settings(settings) as producer:
        params = {"max_new_tokens": MAX_NEW_TOKENS}
        started = time.perf_counter()
        ids = await producer.submit_many(
            [{"adapter": adapter, "prompt": prompt, "params": params} for adapter, prompt in jobs]
        )
        records = await producer.wait_many(ids, timeout=300)
        seconds = time.perf_counter() - started
    failed = [
        job_id for job_id, record in records.items() if record.status is not JobStatus.SUCCEEDED
    ]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {records[failed[0]]}")
    return len(jobs) / seconds


def deploy_noop(settings: WorkerSettings, chunks: int = 1) -> None:
    """The JobConsumer of the real app, in front of :class:`NoopModel`."""
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.model_num_cpus},
    )(NoopModel)
    consumer = serve.deployment(
        name=CONSUMER_DEPLOYMENT, ray_actor_options={"num_cpus": settings.consumer_num_cpus}
    )(JobConsumer)
    serve.run(
        consumer.bind(model.bind(chunks, settings.stream_chunk_ms / 1000), settings),
        name=settings.app_name,
        route_prefix=settings.http_route_prefix,
    )


async def compare(
    name: str, settings: WorkerSettings, jobs: list[Job], args: Any
) -> dict[str, Any]:
    """Warm both paths up, then measure direct and queued in interleaved rounds.

    Other work on the machine shifts single runs; pairing each queue run with a direct run
    taken just before it and reporting the median round keeps that out of the ratio.
    """
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=settings.app_name)
    concurrency, affinity = args.concurrency, settings.affinity_routing
    warmup = jobs[: 2 * concurrency]
    await direct(handle, warmup, concurrency, affinity=affinity)
    await queued(settings, warmup, concurrency)
    rounds, bulk_ratios = [], []
    for _ in range(args.rounds):
        direct_run = await direct(handle, jobs, concurrency, affinity=affinity)
        rounds.append((direct_run, await queued(settings, jobs, concurrency)))
        bulk_ratios.append(await queued_bulk(settings, jobs) / direct_run.jobs_per_s)
    rounds.sort(key=lambda pair: pair[1].jobs_per_s / pair[0].jobs_per_s)
    direct_run, queue_run = rounds[len(rounds) // 2]
    ratios = [q.jobs_per_s / d.jobs_per_s for d, q in rounds]
    bulk_ratios.sort()
    row = {
        "engine": name,
        "direct": asdict(direct_run),
        "queue": asdict(queue_run),
        "throughput_ratio": queue_run.jobs_per_s / direct_run.jobs_per_s,
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "bulk_ratio": bulk_ratios[len(bulk_ratios) // 2],
        "bulk_ratio_min": bulk_ratios[0],
        "bulk_ratio_max": bulk_ratios[-1],
        "rounds": [{"direct": asdict(d), "queue": asdict(q)} for d, q in rounds],
        "added_p50_ms": queue_run.p50_ms - direct_run.p50_ms,
        "added_p99_ms": queue_run.p99_ms - direct_run.p99_ms,
        "p50_ratio": queue_run.p50_ms / direct_run.p50_ms,
        "p99_ratio": queue_run.p99_ms / direct_run.p99_ms,
    }
    print(
        f"{name}: direct {direct_run.jobs_per_s:.1f} jobs/s, queue {queue_run.jobs_per_s:.1f} "
        f"jobs/s, ratio {row['throughput_ratio']:.2f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}), "
        f"bulk ratio {row['bulk_ratio']:.2f}"
    )
    return row


def bench_settings(
    redis_url: str, app_name: str, concurrency: int, **overrides: Any
) -> WorkerSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "prefix": f"loraqbench:{uuid.uuid4().hex[:10]}",
        "app_name": app_name,
        "http_route_prefix": f"/{app_name}",
        "num_model_replicas": 1,
        "model_num_cpus": 1.0,
        "consumer_num_cpus": 0.25,
        "max_in_flight": concurrency,
        "max_ongoing_requests": max(64, 2 * concurrency),
        "max_batch_size": 16,
    }
    return WorkerSettings(**{**values, **overrides})


def clean(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


def demo_jobs(count: int) -> list[Job]:
    """``count`` jobs over the demo kit's adapters and the base model, in turns."""
    inputs = heldout_inputs()
    adapters: list[str | None] = [*ADAPTER_RULES, None]
    return [(adapters[i % len(adapters)], inputs[i % len(inputs)]) for i in range(count)]


def noop_ceiling(redis_url: str, jobs: list[Job], args: Any, **overrides: Any) -> dict[str, Any]:
    """:func:`compare` on the JobConsumer in front of :class:`NoopModel` (on a running
    Ray): the queue machinery's own ceiling against the direct handle. ``args`` needs
    ``concurrency`` and ``rounds``; ``overrides`` go to the consumer's settings."""
    settings = bench_settings(
        redis_url,
        "bench-noop",
        args.concurrency,
        affinity_routing=False,
        model_num_cpus=0.25,
        **overrides,
    )
    deploy_noop(settings)
    try:
        return asyncio.run(compare("no-op model", settings, jobs, args))
    finally:
        serve.delete(settings.app_name)
        clean(redis_url, settings.prefix)


def shard_cost(jobs: list[Job], args: Any, state_dir: str, chunks: int) -> dict[str, Any]:
    """The no-op model's jobs in bulk, each answer streamed in ``chunks`` chunks, through a
    Redis server of the bench's own: jobs/s, and the commands and Redis CPU time each job
    cost that server."""
    with EmbeddedRedis(state_dir=state_dir) as server:
        settings = bench_settings(
            server.url,
            "bench-shard",
            args.concurrency,
            affinity_routing=False,
            model_num_cpus=0.25,
        )
        deploy_noop(settings, chunks)
        try:
            asyncio.run(queued_bulk(settings, jobs[: 2 * args.concurrency]))  # warm-up
            with redis.Redis.from_url(server.url) as client, ShardProbe(client) as probe:
                started = time.perf_counter()
                asyncio.run(queued_bulk(settings, jobs))
                seconds = time.perf_counter() - started
        finally:
            serve.delete(settings.app_name)
    cost = {"chunks": chunks, **probe.cost(len(jobs), seconds).to_dict()}
    print(
        f"one shard, {chunks} chunk(s) a job: {cost['jobs_per_s']:.1f} jobs/s (no-op model), "
        f"{cost['commands_per_job']:.1f} Redis commands and "
        f"{cost['redis_cpu_us_per_job']:.0f} µs of Redis CPU per job: "
        f"ceiling {cost['redis_ceiling_jobs_per_s']:.0f} jobs/s"
    )
    return cost


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The comparisons (none with ``--shard-only``) and the one-shard cost."""
    redis_url, embedded = resolve_redis_url(os.environ.get("LORAQ_REDIS_URL"), DEFAULT_REDIS_URL)
    jobs = demo_jobs(args.jobs)
    launch.allow_slow_proxy_start()
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    rows, shard = [], []
    try:
        if not args.shard_only:
            settings = bench_settings(redis_url, "bench-engine", args.concurrency)
            running = launch.deploy(settings)
            try:
                rows.append(asyncio.run(compare("demo model", settings, jobs, args)))
            finally:
                launch.shutdown(running)
                clean(redis_url, settings.prefix)
            rows.append(noop_ceiling(redis_url, jobs, args))
        if args.shard_jobs:
            for chunks in SHARD_CHUNKS:
                with tempfile.TemporaryDirectory() as state_dir:
                    shard.append(shard_cost(demo_jobs(args.shard_jobs), args, state_dir, chunks))
    finally:
        serve.shutdown()
        ray.shutdown()
        if embedded is not None:
            embedded.stop()
    return {"rows": rows, "shard": shard}


def write(results: dict[str, Any], args: argparse.Namespace) -> None:
    rows, shard = results["rows"], results["shard"]
    meta = {
        "rounds": args.rounds,
        "jobs": args.jobs,
        "shard_jobs": args.shard_jobs,
        "concurrency": args.concurrency,
        "max_new_tokens": MAX_NEW_TOKENS,
        "cpus": os.cpu_count(),
    }
    columns = {
        "engine": lambda row: row["engine"],
        "direct jobs/s": lambda row: f"{row['direct']['jobs_per_s']:.1f}",
        "queue jobs/s": lambda row: f"{row['queue']['jobs_per_s']:.1f}",
        "queue/direct": lambda row: f"{row['throughput_ratio']:.2f}",
        "range": lambda row: f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}",
        "bulk/direct": lambda row: f"{row['bulk_ratio']:.2f}",
        "direct p50 ms": lambda row: f"{row['direct']['p50_ms']:.1f}",
        "queue p50 ms": lambda row: f"{row['queue']['p50_ms']:.1f}",
        "added p50 ms": lambda row: f"{row['added_p50_ms']:.1f}",
        "direct p99 ms": lambda row: f"{row['direct']['p99_ms']:.1f}",
        "queue p99 ms": lambda row: f"{row['queue']['p99_ms']:.1f}",
        "added p99 ms": lambda row: f"{row['added_p99_ms']:.1f}",
    }
    lines = []
    if rows:
        lines += [
            f"# Queue path vs direct handle ({args.jobs} jobs x {args.rounds} rounds, "
            f"{args.concurrency} in flight, {os.cpu_count()} CPUs, "
            f"max_new_tokens {MAX_NEW_TOKENS})",
            "",
            "Median round shown; range = queue/direct over all rounds. queue: 32 clients each "
            "submitting a job and waiting for it; bulk: all jobs submitted at once "
            "(`submit_many`), then awaited (`wait_many`), the consumer keeping 32 in flight.",
            "",
            *table(columns, rows),
            "",
        ]
    if shard:
        lines += shard_lines(shard)
    save("queue", {"meta": meta, "rows": rows, "shard": shard}, lines)
    if rows:
        plot(rows)
    if shard:
        plot_shard(shard)


def shard_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The one-shard figures as markdown: per run the totals, what one more streamed chunk
    adds, and each command's calls per job."""
    first, last = runs[0], runs[-1]
    extra = last["chunks"] - first["chunks"]
    lines = [
        f"# One Redis shard, no-op model ({first['jobs']} jobs in bulk per run, a Redis "
        "server of the bench's own)",
        "",
        *table(
            {
                "chunks a job": lambda run: str(run["chunks"]),
                "jobs/s": lambda run: f"{run['jobs_per_s']:.1f}",
                "commands per job": lambda run: f"{run['commands_per_job']:.1f}",
                "Redis CPU µs per job": lambda run: f"{run['redis_cpu_us_per_job']:.0f}",
                "Redis-bound ceiling jobs/s": lambda run: f"{run['redis_ceiling_jobs_per_s']:.0f}",
            },
            runs,
        ),
        "",
        "Commands run inside Lua scripts are counted; jobs/s is bound by the workers' "
        "machine here, the ceiling by the Redis main thread (1 s of its CPU / CPU per job).",
    ]
    if extra:
        commands = (last["commands_per_job"] - first["commands_per_job"]) / extra
        cpu_us = (last["redis_cpu_us_per_job"] - first["redis_cpu_us_per_job"]) / extra
        lines += ["", f"Each streamed chunk adds {commands:.1f} commands and {cpu_us:.1f} µs."]
    names = list(dict.fromkeys(name for run in runs for name in run["calls_per_job"]))
    columns: dict[str, Callable[[Row], str]] = {"command": lambda row: f"`{row['command']}`"}
    for run in runs:
        calls = run["calls_per_job"]
        columns[f"calls per job, {run['chunks']} chunk(s)"] = lambda row, calls=calls: (
            f"{calls.get(row['command'], 0.0):.2f}"
        )
    return [*lines, "", *table(columns, [{"command": name} for name in names])]


def plot_shard(runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for run in runs for name in run["calls_per_job"]))[::-1]
    fig, axis = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    height = 0.8 / len(runs)
    for i, run in enumerate(runs):
        axis.barh(
            [n + i * height for n in range(len(names))],
            [run["calls_per_job"].get(name, 0.0) for name in names],
            height,
            label=f"{run['chunks']} chunk(s) a job: {run['commands_per_job']:.1f} commands, "
            f"{run['redis_cpu_us_per_job']:.0f} µs Redis CPU",
        )
    axis.set_yticks([n + 0.4 - height / 2 for n in range(len(names))], names)
    axis.set_xlabel("Redis calls per job")
    axis.set_title("what one job costs one Redis shard (no-op model)")
    axis.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "queue_shard.png", dpi=120)


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [row["engine"] for row in rows]
    x = range(len(rows))
    width = 0.38
    left.bar(
        [i - width / 2 for i in x],
        [row["direct"]["jobs_per_s"] for row in rows],
        width,
        label="direct handle",
    )
    left.bar(
        [i + width / 2 for i in x],
        [row["queue"]["jobs_per_s"] for row in rows],
        width,
        label="through Redis",
    )
    left.set_xticks(list(x), names)
    left.set_ylabel("jobs/s")
    left.set_title("throughput")
    left.legend()
    for path, offset in (("direct", -width / 2), ("queue", width / 2)):
        right.bar(
            [i + offset for i in x],
            [row[path]["p50_ms"] for row in rows],
            width,
            label=f"{path} p50",
        )
        right.scatter(
            [i + offset for i in x],
            [row[path]["p99_ms"] for row in rows],
            marker="_",
            s=400,
            label=f"{path} p99",
        )
    right.set_xticks(list(x), names)
    right.set_ylabel("latency per job, ms")
    right.set_title("latency (bar p50, mark p99)")
    right.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "queue.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved direct/queue rounds")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--shard-jobs", type=int, default=2000, help="no-op jobs through the bench's own Redis"
    )
    parser.add_argument(
        "--shard-only", action="store_true", help="only the one-shard cost, no comparison"
    )
    args = parser.parse_args()
    write(run(args), args)


if __name__ == "__main__":
    main()
