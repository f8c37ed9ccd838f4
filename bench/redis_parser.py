"""redis-py's reply parsers on a consumer's read: pure Python against hiredis (C).

A consumer claims stream entries in one ``XREADGROUP`` of up to ``LORAQ_MAX_CLAIMED_JOBS``
entries; behind a flood of one tenant's jobs, another tenant's first job waits for that
reply to be parsed. This times the read of ``--jobs`` queued jobs (the tenants bench's
shape, submitted by the producer library) with each parser, alternating, best of
``--repeats``, against ``LORAQ_REDIS_URL`` or the default server (started embedded when
none answers), under a prefix of its own that it deletes after.

    python -m bench.redis_parser [--jobs 5000] [--repeats 5]

Writes bench/results/redis_parser.{json,md,png}.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    raise SystemExit("run as: python -m bench.redis_parser  (see the module docstring)")

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

from bench.report import RESULTS, save, table
from bench.tenants import flood
from producer import AsyncProducer
from producer.embedded import resolve_redis_url
from producer.settings import DEFAULT_REDIS_URL, ClientSettings

PARSERS: dict[str, Any] = {"python": _AsyncRESP2Parser, "hiredis": _AsyncHiredisParser}


async def read_once(client: aioredis.Redis, stream: str, count: int) -> tuple[float, int]:
    """Seconds to read every entry of ``stream`` through a new group, and how many."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    await client.xgroup_create(stream, group, id="0")
    try:
        started = time.perf_counter()
        reply = await client.xreadgroup(group, "reader", {stream: ">"}, count=count)
        took = time.perf_counter() - started
    finally:
        await client.xgroup_destroy(stream, group)
    return took, len(reply[0][1]) if reply else 0


async def measure(redis_url: str, jobs: int, repeats: int) -> dict[str, Any]:
    settings = ClientSettings(
        redis_url=redis_url, prefix=f"loraqbench:parser{uuid.uuid4().hex[:8]}"
    )
    async with AsyncProducer.from_settings(settings) as producer:
        try:
            await flood(producer, "A", jobs)
            clients = {
                name: aioredis.Redis(
                    connection_pool=aioredis.ConnectionPool.from_url(redis_url, parser_class=cls)
                )
                for name, cls in PARSERS.items()
            }
            times: dict[str, list[float]] = {name: [] for name in PARSERS}
            for _ in range(repeats):  # alternating, so that the machine's noise hits both
                for name, client in clients.items():
                    took, read = await read_once(client, producer.keys.jobs, jobs + 1)
                    assert read == jobs, (name, read)
                    times[name].append(took)
            for client in clients.values():
                await client.aclose()
        finally:
            async for key in producer.client.scan_iter(match=f"{settings.prefix}*", count=1000):
                await producer.client.delete(key)
    return {
        name: {"best_ms": min(t) * 1000, "all_ms": [x * 1000 for x in t]}
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    redis_url, embedded = resolve_redis_url(os.environ.get("LORAQ_REDIS_URL"), DEFAULT_REDIS_URL)
    try:
        results = asyncio.run(measure(redis_url, args.jobs, args.repeats))
    finally:
        if embedded is not None:
            embedded.stop()
    ratio = results["python"]["best_ms"] / results["hiredis"]["best_ms"]
    rows = [
        {
            "parser": name,
            "best": f"{r['best_ms']:.1f}",
            "per entry": f"{r['best_ms'] * 1000 / args.jobs:.1f}",
        }
        for name, r in results.items()
    ]
    columns = {
        "parser": lambda row: row["parser"],
        f"XREADGROUP of {args.jobs} jobs, best of {args.repeats} (ms)": lambda row: row["best"],
        "per entry (us)": lambda row: row["per entry"],
    }
    lines = [
        f"# redis-py reply parsers: one read of {args.jobs} queued jobs ({os.cpu_count()} CPUs)",
        "",
        *table(columns, rows),
        "",
        f"pure Python / hiredis: **{ratio:.1f}x**",
    ]
    save(
        "redis_parser",
        {"args": vars(args), "results": results, "python_over_hiredis": ratio},
        lines,
    )
    plot(results, args.jobs)


def plot(results: dict[str, Any], jobs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(5, 4))
    axes.bar(list(results), [r["best_ms"] for r in results.values()], color=["grey", "tab:blue"])
    axes.set_ylabel(f"ms to read {jobs} entries (best)")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "redis_parser.png", dpi=120)


if __name__ == "__main__":
    main()
