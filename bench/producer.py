"""Submit throughput of the producer against raw XADD on the same server, as ratios.

Every path writes ``--jobs`` jobs of the same payload, from this process, to the same
Redis server, under a prefix of its own (deleted afterwards):

- raw XADD, one call per entry, and pipelined in chunks (what redis-benchmark measures);
- raw MULTI of XADD + HSET + EXPIRE, pipelined: the producer's writes, without the
  producer's validation, id and Lua;
- ``Producer.submit`` (one call, one round trip per job) and ``Producer.submit_many``
  (one round trip per chunk);
- the ``redis-benchmark`` binary's XADD, when it is installed (a C client: the ceiling).

    python -m bench.producer [--jobs 5000] [--chunk-size 500] [--repeat 3]

Writes bench/results/producer.{json,md,png}. Run it as a module: run by path, this file
would shadow the ``producer`` package.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    raise SystemExit("run as: python -m bench.producer  (see the module docstring)")

import argparse
import json
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import redis

from bench.report import RESULTS
from producer import Producer
from producer.embedded import EmbeddedRedis, resolve_redis_url
from producer.settings import DEFAULT_REDIS_URL, ClientSettings
from producer.submission import prepare_jobs
from schemas import codec

PROMPT = "Translate to SQL: list the ten customers with the most orders in 2025."


@dataclass
class Measure:
    """One path: how many jobs in how long, and its ratio to its raw XADD baseline."""

    path: str
    jobs: int
    seconds: float
    jobs_per_s: float
    baseline: str
    ratio: float | None = None
    ratio_to_redis_benchmark: float | None = None


def timed(jobs: int, run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(seconds, jobs per second) of the fastest of ``repeat`` runs (the least disturbed
    by other load on the machine)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best, jobs / best


def payload() -> str:
    """A job JSON like the producer writes, so every path moves the same bytes."""
    return codec.dumps(prepare_jobs([{"prompt": PROMPT, "adapter": "sql"}])[0])


def raw_single(client: redis.Redis, key: str, jobs: int) -> None:
    body = payload()
    for _ in range(jobs):
        client.xadd(key, {"job": body})


def raw_pipelined(client: redis.Redis, key: str, jobs: int, chunk: int) -> None:
    body = payload()
    for start in range(0, jobs, chunk):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(chunk, jobs - start)):
            pipe.xadd(key, {"job": body})
        pipe.execute()


def raw_atomic_pipelined(client: redis.Redis, prefix: str, jobs: int, chunk: int) -> None:
    body = payload()
    for start in range(0, jobs, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + chunk, jobs)):
            record = f"{prefix}:job:{i}"
            pipe.execute_command("MULTI")  # per job, as the Lua script is
            pipe.xadd(f"{prefix}:jobs", {"job": body})
            pipe.hset(record, mapping={"status": "queued", "adapter": "sql", "attempts": 0})
            pipe.expire(record, 604800)
            pipe.execute_command("EXEC")
        pipe.execute()


def redis_benchmark(url: str, key: str, jobs: int, pipeline: int) -> float | None:
    """Requests/s of the redis-benchmark binary's XADD (one client), or None without it."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return None
    where = urlparse(url)
    out = subprocess.run(
        [binary, "-h", where.hostname or "127.0.0.1", "-p", str(where.port or 6379),
         "-c", "1", "-n", str(jobs), "-P", str(pipeline), "--csv",
         "XADD", key, "*", "job", payload()],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    # The last CSV row: "test name","rps",... where the name holds the payload's quotes.
    row = out.strip().splitlines()[-1]
    return float(row.rsplit(",", 7)[1].strip('"'))


def run_all(url: str, jobs: int, chunk: int, repeat: int) -> list[Measure]:
    prefix = f"loraqbench:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    producer = Producer.from_settings(ClientSettings(redis_url=url, prefix=prefix))
    measures: list[Measure] = []

    def add(path: str, baseline: str, run: Callable[[], object]) -> None:
        seconds, rate = timed(jobs, run, repeat)
        measures.append(Measure(path, jobs, round(seconds, 4), round(rate, 1), baseline))

    try:
        add("raw XADD, single", "", lambda: raw_single(client, f"{prefix}:raw1", jobs))
        add("raw XADD, pipelined", "", lambda: raw_pipelined(client, f"{prefix}:raw2", jobs, chunk))
        add(
            "raw MULTI XADD+HSET+EXPIRE, pipelined",
            "raw XADD, pipelined",
            lambda: raw_atomic_pipelined(client, f"{prefix}:atomic", jobs, chunk),
        )
        add(
            "Producer.submit, single",
            "raw XADD, single",
            lambda: [producer.submit(PROMPT, adapter="sql") for _ in range(jobs)],
        )
        add(
            "Producer.submit_many, pipelined",
            "raw XADD, pipelined",
            lambda: producer.submit_many(
                [{"prompt": PROMPT, "adapter": "sql"}] * jobs, chunk_size=chunk
            ),
        )
        add("validation + JSON only (no Redis)", "", lambda: prepare_jobs(
            [{"prompt": PROMPT, "adapter": "sql"}] * jobs))  # fmt: skip
        for pipeline in (1, chunk):
            rate = redis_benchmark(url, f"{prefix}:rb", jobs, pipeline)
            if rate is not None:
                label = "redis-benchmark XADD, " + ("single" if pipeline == 1 else "pipelined")
                measures.append(Measure(label, jobs, round(jobs / rate, 4), rate, ""))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        producer.close()
        client.close()

    rates = {m.path: m.jobs_per_s for m in measures}
    for m in measures:
        if m.baseline:
            m.ratio = round(m.jobs_per_s / rates[m.baseline], 3)
            native = rates.get(m.baseline.replace("raw XADD", "redis-benchmark XADD"))
            m.ratio_to_redis_benchmark = round(m.jobs_per_s / native, 3) if native else None
    return measures


def write(measures: list[Measure], args: argparse.Namespace, url: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"jobs": args.jobs, "chunk_size": args.chunk_size, "repeat": args.repeat, "redis": url,
            "python": platform.python_version(), "machine": platform.machine()}  # fmt: skip
    (RESULTS / "producer.json").write_text(
        json.dumps({"meta": meta, "results": [asdict(m) for m in measures]}, indent=2) + "\n"
    )
    lines = [
        f"# Producer submit throughput ({args.jobs} jobs, chunks of {args.chunk_size}, "
        f"best of {args.repeat})",
        "",
        "| path | seconds | jobs/s | ratio to in-process baseline | ratio to redis-benchmark |",
        "|---|---:|---:|---|---:|",
    ]
    for m in measures:
        ratio = f"{m.ratio:.2f} x {m.baseline}" if m.ratio is not None else ""
        native = m.ratio_to_redis_benchmark
        lines.append(
            f"| {m.path} | {m.seconds:.3f} | {m.jobs_per_s:,.0f} | {ratio} | "
            f"{'' if native is None else f'{native:.2f}'} |"
        )
    (RESULTS / "producer.md").write_text("\n".join(lines) + "\n")
    plot(measures, args)


def plot(measures: list[Measure], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [m.path for m in measures]
    colors = ["tab:orange" if m.path.startswith("Producer") else "tab:blue" for m in measures]
    ax.barh(names, [m.jobs_per_s for m in measures], color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("jobs per second (log scale)")
    ax.set_title(f"Submit throughput, {args.jobs} jobs, one client process")
    ax.invert_yaxis()
    for y, m in enumerate(measures):
        ax.text(m.jobs_per_s, y, f" {m.jobs_per_s:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "producer.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the best counts")
    args = parser.parse_args()
    url, server = resolve_redis_url(ClientSettings().redis_url, DEFAULT_REDIS_URL)
    try:
        measures = run_all(url, args.jobs, args.chunk_size, args.repeat)
    finally:
        if isinstance(server, EmbeddedRedis):
            server.stop()
    write(measures, args, url)
    for m in measures:
        ratio = f"  ({m.ratio:.2f} x {m.baseline})" if m.ratio is not None else ""
        print(f"{m.path:40s} {m.jobs_per_s:>12,.0f} jobs/s{ratio}")


if __name__ == "__main__":
    main()
