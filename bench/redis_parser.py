"""A consumer's read of a flood: redis-py's reply parsers (pure Python against hiredis,
in C), then the entries turned into the window's claims (the claim view against the full
parse).

A consumer claims stream entries in one ``XREADGROUP`` of up to ``LORAQ_MAX_CLAIMED_JOBS``
entries; behind a flood of one tenant's jobs, another tenant's first job waits for that
reply to be parsed and for each entry before it to be claimed. This times the read of
``--jobs`` queued jobs (the tenants bench's shape, submitted by the producer library) with
each parser, alternating, best of ``--repeats``, then the claims of the entries read, each
way, against ``LORAQ_REDIS_URL`` or the default server (started embedded when none
answers), under a prefix of its own that it deletes after.

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
from schemas.codec import as_text
from workers.queue import policy

PARSERS: dict[str, Any] = {"python": _AsyncRESP2Parser, "hiredis": _AsyncHiredisParser}


async def read_once(
    client: aioredis.Redis, stream: str, count: int
) -> tuple[float, list[tuple[str, dict[str, str]]]]:
    """Seconds to read every entry of ``stream`` through a new group, and the entries."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    await client.xgroup_create(stream, group, id="0")
    try:
        started = time.perf_counter()
        reply = await client.xreadgroup(group, "reader", {stream: ">"}, count=count)
        took = time.perf_counter() - started
    finally:
        await client.xgroup_destroy(stream, group)
    entries = [
        (as_text(entry_id), {as_text(k): as_text(v) for k, v in fields.items()})
        for entry_id, fields in (reply[0][1] if reply else [])
    ]
    return took, entries


def claim_times(entries: list[tuple[str, dict[str, str]]], repeats: int) -> dict[str, Any]:
    """Seconds to turn ``entries`` into the window's claims: the claim view (what the
    consumer does now) and the full parse (what it did before), alternating."""
    ways: dict[str, Any] = {"claim view": policy.claim_entry, "full parse": policy.parse_entry}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            for entry_id, fields in entries:
                way(entry_id, fields)
            times[name].append(time.perf_counter() - started)
    return summarised(times)


def summarised(times: dict[str, list[float]]) -> dict[str, Any]:
    """Each way's best and every time, in ms."""
    return {
        name: {"best_ms": min(t) * 1000, "all_ms": [x * 1000 for x in t]}
        for name, t in times.items()
    }


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
                    took, entries = await read_once(client, producer.keys.jobs, jobs + 1)
                    assert len(entries) == jobs, (name, len(entries))
                    times[name].append(took)
            for client in clients.values():
                await client.aclose()
        finally:
            async for key in producer.client.scan_iter(match=f"{settings.prefix}*", count=1000):
                await producer.client.delete(key)
    return {**summarised(times), **claim_times(entries, repeats)}


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
    claim_ratio = results["full parse"]["best_ms"] / results["claim view"]["best_ms"]
    rows = [
        {
            "step": f"{'XREADGROUP, parser' if name in PARSERS else 'claims, by'} {name}",
            "best": f"{r['best_ms']:.1f}",
            "per entry": f"{r['best_ms'] * 1000 / args.jobs:.1f}",
        }
        for name, r in results.items()
    ]
    columns = {
        "step": lambda row: row["step"],
        f"{args.jobs} jobs, best of {args.repeats} (ms)": lambda row: row["best"],
        "per entry (us)": lambda row: row["per entry"],
    }
    lines = [
        f"# A consumer's read of {args.jobs} queued jobs ({os.cpu_count()} CPUs)",
        "",
        *table(columns, rows),
        "",
        f"pure Python / hiredis: **{ratio:.1f}x**; full parse / claim view: **{claim_ratio:.1f}x**",
    ]
    save(
        "redis_parser",
        {
            "args": vars(args),
            "results": results,
            "python_over_hiredis": ratio,
            "full_parse_over_claim_view": claim_ratio,
        },
        lines,
    )
    plot(results, args.jobs)


def plot(results: dict[str, Any], jobs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(5, 4))
    axes.bar(
        list(results),
        [r["best_ms"] for r in results.values()],
        color=["grey", "tab:blue", "tab:blue", "grey"],
    )
    axes.set_ylabel(f"ms for {jobs} entries (best)")
    axes.set_title("the read (by parser), then the claims")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "redis_parser.png", dpi=120)


if __name__ == "__main__":
    main()
