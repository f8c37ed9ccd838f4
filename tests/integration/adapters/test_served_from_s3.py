"""The served app with every adapter in S3 and none on disk: a Zipf stream over 1,000
names that nothing registers (``LORAQ_ADAPTER_SOURCE``), each job answered by its
adapter, each adapter downloaded once, nothing evicted while in use."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from demo.evaluate import MAX_NEW_TOKENS
from demo.tasks import ADAPTER_RULES, expected_output
from producer.client import Producer
from schemas import JobStatus
from tests.integration.adapters.conftest import DEMO_ADAPTERS, S3Server
from tests.integration.serve.conftest import (
    delete_prefix,
    e2e_settings,
    prompts_right_on_every_model,
)
from workers import launch

NAMES = 1000
JOBS = 1000
DEMOS = sorted(ADAPTER_RULES)


def zipf_stream(count: int, names: list[str], seed: int) -> list[str]:
    """``count`` draws from ``names`` with P(rank k) ∝ 1/k (Zipf, s = 1.0)."""
    weights = [1.0 / rank for rank in range(1, len(names) + 1)]
    return random.Random(seed).choices(names, weights=weights, k=count)


@pytest.fixture(scope="module")
def served(
    ray_serve: str, redis_url: str, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, dict[str, str]]]:
    """1,000 names in S3 (the four demo adapters under 250 names each, and under their
    own names), and the app that serves them from there."""
    bucket = s3.bucket()
    client = s3.client()
    names: dict[str, str] = {demo: demo for demo in DEMOS}
    for index in range(NAMES // len(DEMOS)):
        for demo in DEMOS:
            names[f"{demo}-{index:03d}"] = demo
    files = {demo: sorted((DEMO_ADAPTERS / demo).iterdir()) for demo in DEMOS}
    for name, demo in names.items():
        for path in files[demo]:
            client.put_object(
                Bucket=bucket, Key=f"adapters/{name}/{path.name}", Body=path.read_bytes()
            )
    settings = e2e_settings(
        redis_url,
        app_name="s3src",
        num_model_replicas=1,
        max_adapters_per_replica=4,
        adapter_dir=None,
        adapter_source=f"s3://{bucket}/adapters",
        adapter_disk_cache_dir=str(tmp_path_factory.mktemp("disk-tier")),
        max_in_flight=48,
    )
    running = launch.deploy(settings)
    yield running, names
    launch.shutdown(running)
    delete_prefix(redis_url, settings.prefix)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 1,000 jobs, a third of them cold: 140-240 s here
def test_a_zipf_stream_over_1000_unregistered_names_answers_right(
    served: tuple[Any, dict[str, str]],
) -> None:
    running, names = served
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
