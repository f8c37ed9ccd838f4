"""``loraq demo``: the whole product in one command, on the bundled demo kit.

Serves the demo model, submits one job per demo adapter and one for the base model
through the Python producer and one through plain ``redis-cli`` (the any-language path),
waits, calls the gateway's synchronous HTTP endpoint once, prints what came back, and
shuts everything down.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from demo.tasks import ADAPTER_RULES, expected_output, heldout_inputs
from producer.client import Producer
from producer.errors import JobTimeoutError
from schemas import JobRecord, JobStatus, Keys
from workers import launch
from workers.deploy_command import CANNOT_START, deploy_or_say_why, settings_or_say_why
from workers.settings import WorkerSettings

DEMO_MAX_NEW_TOKENS = 32
# Small enough for two cores: the model replica and the consumer share them.
DEMO_DEFAULTS = {"model_num_cpus": 0.5, "consumer_num_cpus": 0.1, "max_batch_size": 8}


@dataclass(frozen=True)
class DemoJob:
    """One demo request and how it was sent (``job_id`` is empty for the HTTP call)."""

    job_id: str
    adapter: str | None
    prompt: str
    via: str

    @property
    def expected(self) -> str:
        """The output the adapter's rule predicts."""
        return expected_output(self.adapter, self.prompt)


@dataclass(frozen=True)
class Answer:
    """What came back for a demo request."""

    ok: bool
    text: str
    latency_ms: float | None = None
    replica: str | None = None


def redis_cli_submit(url: str, keys: Keys, adapter: str, prompt: str) -> str | None:
    """XADD a job with the ``redis-cli`` binary; its entry ID is the job id."""
    binary = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if binary is None:
        return None
    payload = orjson.dumps({"adapter": adapter, "prompt": prompt}).decode()
    out = subprocess.run(
        [binary, "-u", url, "XADD", keys.jobs, "*", "job", payload],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def submit_demo_jobs(
    producer: Producer, settings: WorkerSettings, prompts: Iterator[str]
) -> list[DemoJob]:
    """A job for every demo adapter and the base model, and one more through redis-cli."""
    params = {"max_new_tokens": DEMO_MAX_NEW_TOKENS}
    jobs = []
    for adapter in [*ADAPTER_RULES, None]:
        prompt = next(prompts)
        job_id = producer.submit(prompt, adapter=adapter, params=params)
        jobs.append(DemoJob(job_id, adapter, prompt, "python"))
    adapter, prompt = next(iter(ADAPTER_RULES)), next(prompts)
    entry_id = redis_cli_submit(settings.effective_redis_url, producer.keys, adapter, prompt)
    if entry_id:
        jobs.append(DemoJob(entry_id, adapter, prompt, "redis-cli"))
    return jobs


def answer_of(record: JobRecord | None, job: DemoJob) -> Answer:
    """A queued job's answer, from its final record."""
    if record is None:
        return Answer(False, "(no answer)")
    result = record.result
    if record.status is not JobStatus.SUCCEEDED or result is None:
        why = record.error.message if record.error else ""
        return Answer(False, f"{record.status.value}: {why}")
    return Answer(result.text == job.expected, result.text, result.timings.total_ms, result.replica)


def http_generate(settings: WorkerSettings, job: DemoJob) -> Answer:
    """The same model over the gateway's synchronous ``POST /v1/generate`` (no Redis)."""
    prefix = settings.http_route_prefix.rstrip("/")
    url = f"http://{settings.http_host}:{settings.http_port}{prefix}/v1/generate"
    body = {"adapter": job.adapter, "prompt": job.prompt}
    body["params"] = {"max_new_tokens": DEMO_MAX_NEW_TOKENS}  # type: ignore[assignment]
    headers = {"Content-Type": "application/json"}
    if settings.api_keys is not None:
        key = settings.api_keys.get_secret_value().split(",")[0].strip()
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, orjson.dumps(body), headers, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            result = orjson.loads(response.read())
    except (OSError, ValueError) as exc:
        return Answer(False, f"HTTP call failed: {exc}")
    latency_ms = (time.perf_counter() - started) * 1000
    return Answer(result["text"] == job.expected, result["text"], latency_ms, result.get("replica"))


def results_table(rows: list[tuple[DemoJob, Answer]]) -> Table:
    """One line per demo request: what was asked, what came back, whether it is right."""
    table = Table(title="loraq demo: one base model, many adapters")
    for column in ("adapter", "via", "prompt", "output", "ok", "latency ms", "replica"):
        table.add_column(column)
    for job, answer in rows:
        table.add_row(
            job.adapter or "(base)",
            job.via,
            job.prompt,
            answer.text,
            "yes" if answer.ok else f"no (expected {job.expected!r})",
            f"{answer.latency_ms:.0f}" if answer.latency_ms is not None else "-",
            answer.replica or "-",
        )
    return table


def run_requests(running: launch.Running, timeout_s: float) -> list[tuple[DemoJob, Answer]]:
    """Submit the demo jobs, wait for them, and make the one HTTP call."""
    prompts = iter(heldout_inputs())
    with Producer.from_settings(running.settings) as producer:
        jobs = submit_demo_jobs(producer, running.settings, prompts)
        try:
            records = producer.wait_many([job.job_id for job in jobs], timeout=timeout_s)
        except JobTimeoutError as exc:
            records = dict(exc.done)
    rows = [(job, answer_of(records.get(job.job_id), job)) for job in jobs]
    http_job = DemoJob("", "reverse", next(prompts), "http")
    return [*rows, (http_job, http_generate(running.settings, http_job))]


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every request gave the output its adapter's rule predicts."""
    console = Console()

    def say(line: str) -> None:
        console.print(f"[red]{escape(line)}[/red]")

    settings = settings_or_say_why(args, say, **DEMO_DEFAULTS)
    if settings is None:
        return CANNOT_START
    console.print("[bold]starting[/bold] Ray, the demo model and the queue consumer …")
    # Ray's and Serve's own lines (cluster started, token authentication on, app ready)
    # say what the demo's lines say; from ERROR up they still show.
    running = deploy_or_say_why(settings, say, ray_log_level=logging.ERROR)
    if running is None:
        return CANNOT_START
    try:
        for line in running.notes:
            console.print(f"  {line}")
        console.print(
            "submitting a job per adapter (Python producer, redis-cli) and one HTTP call …"
        )
        rows = run_requests(running, args.timeout)
        console.print(results_table(rows))
    finally:
        console.print("shutting down …")
        launch.shutdown(running)
    wrong = sum(not answer.ok for _, answer in rows)
    if wrong:
        console.print(
            f"[red]{wrong} of {len(rows)} requests did not give the expected output[/red]"
        )
        return 1
    console.print(f"[green]all {len(rows)} requests gave their adapter's output[/green]")
    return 0
