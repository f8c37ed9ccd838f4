"""``loraq demo``: the whole product in one command, on the bundled demo kit.

Serves the demo model, submits one job per demo adapter and one for the base model
through the Python producer and one through plain ``redis-cli`` (the any-language path),
waits, prints what came back, and shuts everything down.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from dataclasses import dataclass

import orjson
from rich.console import Console
from rich.table import Table

from demo.tasks import ADAPTER_RULES, expected_output, heldout_inputs
from producer.client import Producer
from producer.errors import JobTimeoutError
from schemas import JobRecord, JobStatus, Keys
from workers.cli import settings_from
from workers.serve import launch
from workers.settings import WorkerSettings

DEMO_MAX_NEW_TOKENS = 32
# Small enough for two cores: the model replica and the consumer share them.
DEMO_DEFAULTS = {"model_num_cpus": 0.5, "consumer_num_cpus": 0.1, "max_batch_size": 8}


@dataclass(frozen=True)
class DemoJob:
    """One submitted demo job and how it was sent."""

    job_id: str
    adapter: str | None
    prompt: str
    via: str

    @property
    def expected(self) -> str:
        """The output the adapter's rule predicts."""
        return expected_output(self.adapter, self.prompt)


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


def submit_demo_jobs(producer: Producer, settings: WorkerSettings) -> list[DemoJob]:
    """A job for every demo adapter and the base model, and one more through redis-cli."""
    prompts = iter(heldout_inputs())
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


def results_table(jobs: list[DemoJob], records: dict[str, JobRecord]) -> tuple[Table, int]:
    """The table of what came back, and how many jobs did not give the expected output."""
    table = Table(title="loraq demo: one base model, many adapters")
    for column in ("adapter", "via", "prompt", "output", "ok", "latency ms", "replica"):
        table.add_column(column)
    wrong = 0
    for job in jobs:
        record = records.get(job.job_id)
        result = record.result if record else None
        output = result.text if result else _failure(record)
        ok = record is not None and record.status is JobStatus.SUCCEEDED and output == job.expected
        wrong += not ok
        latency = result.timings.total_ms if result and result.timings.total_ms else None
        table.add_row(
            job.adapter or "(base)",
            job.via,
            job.prompt,
            output,
            "yes" if ok else f"no (expected {job.expected!r})",
            f"{latency:.0f}" if latency is not None else "-",
            (result.replica if result else None) or "-",
        )
    return table, wrong


def _failure(record: JobRecord | None) -> str:
    if record is None:
        return "(no answer)"
    if record.error is not None:
        return f"{record.status.value}: {record.error.message}"
    return record.status.value


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every job gave the output its adapter's rule predicts."""
    console = Console()
    settings = settings_from(args, **DEMO_DEFAULTS)
    console.print("[bold]starting[/bold] Ray, the demo model and the queue consumer …")
    running = launch.deploy(settings)
    try:
        for line in running.notes:
            console.print(f"  {line}")
        with Producer.from_settings(running.settings) as producer:
            jobs = submit_demo_jobs(producer, running.settings)
            console.print(f"submitted {len(jobs)} jobs; waiting …")
            try:
                records = producer.wait_many([job.job_id for job in jobs], timeout=args.timeout)
            except JobTimeoutError as exc:
                records = dict(exc.done)
        table, wrong = results_table(jobs, records)
        console.print(table)
    finally:
        console.print("shutting down …")
        launch.shutdown(running)
    if wrong:
        console.print(f"[red]{wrong} of {len(jobs)} jobs did not give the expected output[/red]")
        return 1
    console.print(f"[green]all {len(jobs)} jobs gave their adapter's output[/green]")
    return 0
