"""The HTTP gateway's sync endpoint against calling the LoRAModel handle directly.

Both paths run the same greedy requests on the same deployment, as closed loops of
``--concurrency`` clients: the direct path awaits ``LoRAModel.generate`` through a Serve
handle (the adapter as multiplexed model id, as the gateway sends it); the HTTP path posts
``/v1/generate`` to Serve's proxy, which pays for HTTP, the proxy hop, the gateway replica
and JSON. A second pair of runs swaps the model for a no-op deployment: the ceiling of the
HTTP path itself.

    python -m bench.http [--requests 200] [--concurrency 1 16]

Writes bench/results/http.{json,md,png}. (Run it with ``-m``: a script named http.py
run by path would shadow the standard library's ``http`` package.)
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    raise SystemExit("run as: python -m bench.http  (see the module docstring)")

import argparse
import asyncio
import contextlib
import os
import uuid
from dataclasses import asdict
from typing import Any

import aiohttp
import ray
import redis
from ray import serve

from bench.queue import MAX_NEW_TOKENS, Job, Measure, NoopModel, clean, closed_loop, direct
from bench.report import RESULTS, save, table
from demo.tasks import ADAPTER_RULES, heldout_inputs
from producer.embedded import free_port
from workers import launch
from workers.app import GATEWAY_DEPLOYMENT, MODEL_DEPLOYMENT, build_app
from workers.gateway.deployment import Gateway
from workers.settings import WorkerSettings

HOST = "127.0.0.1"


async def over_http(url: str, jobs: list[Job], concurrency: int) -> Measure:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def run_one(job: Job) -> None:
            body = {
                "adapter": job[0],
                "prompt": job[1],
                "params": {"max_new_tokens": MAX_NEW_TOKENS},
            }
            async with session.post(url + "/v1/generate", json=body) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"{reply.status}: {await reply.text()}")
                await reply.read()

        return await closed_loop(jobs, concurrency, run_one)


async def compare(
    name: str, settings: WorkerSettings, url: str, jobs: list[Job], concurrency: int
) -> dict[str, Any]:
    """Warm both paths up, then measure the direct handle and HTTP on one deployment."""
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=settings.app_name)
    warmup = jobs[: max(10, 2 * concurrency)]
    await direct(handle, warmup, concurrency, affinity=True)
    await over_http(url, warmup, concurrency)
    direct_run = await direct(handle, jobs, concurrency, affinity=True)
    http_run = await over_http(url, jobs, concurrency)
    row = {
        "engine": name,
        "concurrency": concurrency,
        "direct": asdict(direct_run),
        "http": asdict(http_run),
        "throughput_ratio": http_run.jobs_per_s / direct_run.jobs_per_s,
        "added_p50_ms": http_run.p50_ms - direct_run.p50_ms,
        "added_p99_ms": http_run.p99_ms - direct_run.p99_ms,
    }
    print(
        f"{name}, {concurrency} in flight: direct {direct_run.jobs_per_s:.1f} req/s, "
        f"HTTP {http_run.jobs_per_s:.1f} req/s, ratio {row['throughput_ratio']:.2f}"
    )
    return row


def bench_settings(app_name: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "app_name": app_name,
        "http_route_prefix": f"/{app_name}",
        "num_model_replicas": 1,
        "model_num_cpus": 1.0,
        "consumer_num_cpus": 0.1,
        "gateway_num_cpus": 0.25,
        "max_ongoing_requests": 64,
        "max_batch_size": 16,
        # No Redis on the sync path; the consumer of the real app idles on a fresh prefix.
        "prefix": f"loraqbench:{uuid.uuid4().hex[:10]}",
    }
    return WorkerSettings(**{**values, **overrides})


def deploy_noop(settings: WorkerSettings) -> None:
    """The gateway in front of :class:`NoopModel`, no queue consumer."""
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.model_num_cpus},
    )(NoopModel)
    gateway = serve.deployment(
        name=GATEWAY_DEPLOYMENT,
        max_ongoing_requests=settings.gateway_max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.gateway_num_cpus},
    )(Gateway)
    serve.run(
        gateway.bind(model.bind(), None, settings),
        name=settings.app_name,
        route_prefix=settings.http_route_prefix,
    )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    inputs = heldout_inputs()
    adapters: list[str | None] = [*ADAPTER_RULES, None]
    jobs: list[Job] = [
        (adapters[i % len(adapters)], inputs[i % len(inputs)]) for i in range(args.requests)
    ]
    port = free_port()
    launch.allow_slow_proxy_start()
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": HOST, "port": port})
    rows: list[dict[str, Any]] = []
    try:
        for name, settings in (
            ("demo model", bench_settings("bench-http")),
            ("no-op model", bench_settings("bench-http-noop", model_num_cpus=0.25)),
        ):
            if name == "demo model":
                serve.run(
                    build_app(settings),
                    name=settings.app_name,
                    route_prefix=settings.http_route_prefix,
                )
            else:
                deploy_noop(settings)
            url = f"http://{HOST}:{port}{settings.http_route_prefix}"
            try:
                for concurrency in args.concurrency:
                    rows.append(asyncio.run(compare(name, settings, url, jobs, concurrency)))
            finally:
                serve.delete(settings.app_name)
                with contextlib.suppress(redis.RedisError):
                    clean(settings.effective_redis_url, settings.prefix)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    meta = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_new_tokens": MAX_NEW_TOKENS,
        "cpus": os.cpu_count(),
    }
    columns = {
        "engine": lambda row: row["engine"],
        "in flight": lambda row: str(row["concurrency"]),
        "direct req/s": lambda row: f"{row['direct']['jobs_per_s']:.1f}",
        "HTTP req/s": lambda row: f"{row['http']['jobs_per_s']:.1f}",
        "HTTP/direct": lambda row: f"{row['throughput_ratio']:.2f}",
        "direct p50 ms": lambda row: f"{row['direct']['p50_ms']:.1f}",
        "HTTP p50 ms": lambda row: f"{row['http']['p50_ms']:.1f}",
        "direct p99 ms": lambda row: f"{row['direct']['p99_ms']:.1f}",
        "HTTP p99 ms": lambda row: f"{row['http']['p99_ms']:.1f}",
        "added p50 / p99 ms": lambda row: f"{row['added_p50_ms']:.1f} / {row['added_p99_ms']:.1f}",
    }
    lines = [
        f"# POST /v1/generate vs the direct handle ({args.requests} requests per run, "
        f"{os.cpu_count()} CPUs, max_new_tokens {MAX_NEW_TOKENS})",
        "",
        *table(columns, rows),
    ]
    save("http", {"meta": meta, "rows": rows}, lines)
    plot(rows)


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{row['engine']}\n{row['concurrency']} in flight" for row in rows]
    x = list(range(len(rows)))
    width = 0.38
    for path, label, offset in (
        ("direct", "direct handle", -width / 2),
        ("http", "HTTP", width / 2),
    ):
        left.bar(
            [i + offset for i in x], [row[path]["jobs_per_s"] for row in rows], width, label=label
        )
        right.bar(
            [i + offset for i in x],
            [row[path]["p50_ms"] for row in rows],
            width,
            label=f"{label} p50",
        )
        right.scatter(
            [i + offset for i in x],
            [row[path]["p99_ms"] for row in rows],
            marker="_",
            s=400,
            label=f"{label} p99",
        )
    left.set_xticks(x, names)
    left.set_ylabel("requests/s")
    left.set_yscale("log")
    left.set_title("throughput")
    left.legend()
    right.set_xticks(x, names)
    right.set_ylabel("latency per request, ms")
    right.set_yscale("log")
    right.set_title("latency (bar p50, mark p99)")
    right.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "http.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    write(run(args), args)


if __name__ == "__main__":
    main()
