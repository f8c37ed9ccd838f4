"""The served app with every adapter in S3 and none on disk: a Zipf stream over 1,000
names that nothing registers (``LORAQ_ADAPTER_SOURCE``), each job answered by its
adapter, each adapter downloaded once, nothing evicted while in use."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from demo.evaluate import MAX_NEW_TOKENS
from demo.tasks import ADAPTER_RULES, expected_output
from producer.client import Producer
from schemas import JobRecord, JobStatus, Keys
from tests.integration.adapters.conftest import DEMO_ADAPTERS, S3Server
from tests.integration.chaos.accounting import account
from tests.integration.serve.conftest import (
    delete_prefix,
    e2e_settings,
    prompts_right_on_every_model,
)
from workers import launch

NAMES = 1000
JOBS = 1000
# Uploads at once to the S3 server while the module sets up (boto3's clients are
# thread-safe).
UPLOAD_THREADS = 8
DEMOS = sorted(ADAPTER_RULES)


def producer_records(client: redis.Redis, keys: Keys, ids: list[str]) -> list[JobRecord]:
    return [JobRecord.from_hash(job_id, client.hgetall(keys.job(job_id))) for job_id in ids]


def zipf_stream(count: int, names: list[str], seed: int) -> list[str]:
    """``count`` draws from ``names`` with P(rank k) ∝ 1/k (Zipf, s = 1.0)."""
    weights = [1.0 / rank for rank in range(1, len(names) + 1)]
    return random.Random(seed).choices(names, weights=weights, k=count)


@dataclass
class Served:
    """The app, the names in its source (name -> demo adapter), the S3 server, the bucket."""

    running: Any
    names: dict[str, str]
    s3: S3Server
    bucket: str

    def producer(self) -> Producer:
        return Producer.from_settings(self.running.settings)

    def keys(self) -> Keys:
        return Keys(self.running.settings.prefix)


@pytest.fixture(scope="module")
def served(
    ray_serve: str, redis_url: str, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """1,000 names in S3 (the four demo adapters under 250 names each, and under their
    own names), and the app that serves them from there."""
    bucket = s3.bucket()
    client = s3.client()
    names: dict[str, str] = {demo: demo for demo in DEMOS}
    for index in range(NAMES // len(DEMOS)):
        for demo in DEMOS:
            names[f"{demo}-{index:03d}"] = demo
    files = {
        demo: [(path.name, path.read_bytes()) for path in sorted((DEMO_ADAPTERS / demo).iterdir())]
        for demo in DEMOS
    }

    def put(name: str) -> None:
        for file_name, body in files[names[name]]:
            client.put_object(Bucket=bucket, Key=f"adapters/{name}/{file_name}", Body=body)

    # The 2,008 objects, 8 requests at a time: one after another took 77 s here, 16 s so.
    with ThreadPoolExecutor(UPLOAD_THREADS) as uploads:
        list(uploads.map(put, names))
    settings = e2e_settings(
        redis_url,
        app_name="s3src",
        num_model_replicas=1,
        max_adapters_per_replica=4,
        adapter_dir=None,
        adapter_source=f"s3://{bucket}/adapters",
        adapter_disk_cache_dir=str(tmp_path_factory.mktemp("disk-tier")),
        max_in_flight=48,
        # An outage shows within seconds: two tries of two seconds a store call.
        adapter_download_timeout_s=2.0,
        adapter_download_attempts=2,
    )
    running = launch.deploy(settings)
    yield Served(running, names, s3, bucket)
    launch.shutdown(running)
    delete_prefix(redis_url, settings.prefix)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 1,000 jobs, a third of them cold: 140-240 s here
def test_a_zipf_stream_over_1000_unregistered_names_answers_right(served: Served) -> None:
    running, names = served.running, served.names
    prompts = prompts_right_on_every_model(running.model, size=60)
    stream = zipf_stream(JOBS, sorted(names), seed=22)
    rng = random.Random(7)
    jobs = [
        {
            "adapter": name,
            "prompt": rng.choice(prompts),
            "params": {"max_new_tokens": MAX_NEW_TOKENS},
        }
        for name in stream
    ]
    producer = Producer.from_settings(running.settings)
    try:
        started = time.monotonic()
        ids = producer.submit_many(jobs)
        records = producer.wait_many(ids, timeout=600)
        seconds = time.monotonic() - started
    finally:
        producer.close()
    wrong = [
        (job["adapter"], job["prompt"], record.result.text if record.result else record.error)
        for job, record in zip(jobs, (records[i] for i in ids), strict=True)
        if record.status is not JobStatus.SUCCEEDED
        or record.result is None
        or record.result.text != expected_output(names[str(job["adapter"])], str(job["prompt"]))
        or not record.result.adapter_version
    ]
    used = set(stream)
    stats = asyncio.run(launch.replica_stats(running.model, 1))
    disk = Counter[str]()
    for replica in stats.values():
        disk.update(replica["disk"])
        assert replica["in_use_evictions"] == 0
    print(
        f"\n{JOBS} jobs over {len(used)} of {len(names)} names in {seconds:.1f}s "
        f"({JOBS / seconds:.1f} jobs/s); downloads {disk['downloads']}, disk hits "
        f"{disk['hits']}, wrong {len(wrong)}"
    )
    assert not wrong, wrong[:5]
    assert disk["downloads"] <= len(used) + len(DEMOS)  # the prompt check's four included
    assert disk["download_failures"] == 0


def test_a_store_outage_under_load_ends_every_job_exactly_once(
    served: Served, redis_url: str
) -> None:
    """The S3 server stops answering for 10 s while jobs run: jobs whose adapter is on
    the node's disk keep running; the others are retried until the store is back or
    fail ``adapter_unavailable``; none is lost, stuck or answered twice."""
    warm = sorted(served.names)[:8]  # downloaded by the Zipf test or now
    cold = sorted(served.names)[-40:]  # never used before this test
    text = "abc de"
    producer = served.producer()
    try:
        producer.wait_many(
            producer.submit_many([{"adapter": name, "prompt": text} for name in warm]), 120
        )
        jobs = [{"adapter": name, "prompt": text} for name in [*warm * 5, *cold]]
        served.s3.pause()
        try:
            ids = producer.submit_many(jobs)
            time.sleep(10)
        finally:
            served.s3.resume()
        producer.wait_many(ids, timeout=300)
    finally:
        producer.close()
    expected = {
        job_id: expected_output(served.names[str(job["adapter"])], text)
        for job_id, job in zip(ids, jobs, strict=True)
    }
    client = redis.Redis.from_url(redis_url)
    try:
        tally = account(client, served.keys(), expected, "S3 outage of 10 s")
        failed = [
            record.error.type.value
            for record in producer_records(client, served.keys(), ids)
            if record.error is not None
        ]
    finally:
        client.close()
    print(f"\n{tally.line()} failed as {sorted(set(failed))}")
    tally.check()
    assert set(failed) <= {"adapter_unavailable"}
    assert tally.statuses["succeeded"] >= len(warm) * 5  # the cached ones ran throughout


def test_a_re_pointed_adapter_serves_its_new_version_after_the_sync_bound(
    served: Served,
) -> None:
    """A new object under an adapter's URI while its jobs stream in: every job that
    starts later than ``LORAQ_REGISTRY_SYNC_S`` after the change answers with the new
    bytes, and every result names the version that answered."""
    sync_s = served.running.settings.registry_sync_s
    name, text = "repointed", "abc de"
    served.s3.upload(served.bucket, f"adapters/{name}", DEMO_ADAPTERS / "upper")
    producer = served.producer()
    try:
        ids, changed_at = [], 0.0
        started = time.time()
        while time.time() - started < 4 * sync_s:
            ids.append(producer.submit(text, adapter=name))
            if not changed_at and time.time() - started > 1.5 * sync_s:
                served.s3.upload(served.bucket, f"adapters/{name}", DEMO_ADAPTERS / "reverse")
                changed_at = time.time()
            time.sleep(0.05)
        records = producer.wait_many(ids, timeout=120)
    finally:
        producer.close()
    late, versions = 0, set()
    for job_id in ids:
        record = records[job_id]
        assert record.status is JobStatus.SUCCEEDED and record.result is not None, record
        assert record.result.adapter_version, record
        versions.add(record.result.adapter_version)
        if (record.started_at or 0.0) > changed_at + sync_s:
            late += 1
            assert record.result.text == expected_output("reverse", text), record
        else:
            assert record.result.text in (
                expected_output("upper", text),
                expected_output("reverse", text),
            )
    print(f"\n{len(ids)} jobs, {late} started past the bound, versions {sorted(versions)}")
    assert late > 0 and len(versions) == 2


def test_a_replica_killed_during_downloads_leaves_no_partial_entry(
    served: Served, redis_url: str
) -> None:
    """SIGKILL the model replica while it downloads: every job ends exactly once (on the
    replica Serve starts instead), and the node's disk tier holds only whole entries."""
    running, cache = served.running, Path(served.running.settings.adapter_disk_cache_dir)
    pid = next(iter(asyncio.run(launch.replica_stats(running.model, 1)).values()))["pid"]
    text = "abc de"
    names = sorted(served.names)[-140:-60]  # cold: no earlier test used them
    producer = served.producer()
    try:
        ids = producer.submit_many([{"adapter": name, "prompt": text} for name in names])
        time.sleep(1.0)  # the first downloads are under way
        os.kill(pid, signal.SIGKILL)
        producer.wait_many(ids, timeout=400)
    finally:
        producer.close()
    expected = {
        job_id: expected_output(served.names[name], text)
        for job_id, name in zip(ids, names, strict=True)
    }
    client = redis.Redis.from_url(redis_url)
    try:
        tally = account(client, served.keys(), expected, "SIGKILL during downloads")
    finally:
        client.close()
    print(f"\n{tally.line()}")
    tally.check()
    assert tally.statuses == {"succeeded": len(names)}
    for entry in (cache / "entries").iterdir():
        files = json.loads((entry / "MANIFEST.json").read_text())["files"]
        for file_name, item in files.items():
            assert (entry / file_name).stat().st_size == item["size"], entry
    assert not [d for d in (cache / "tmp").iterdir() if d.name.startswith(f"{pid}-")]
