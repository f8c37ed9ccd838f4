"""A batch ends with nobody reading it: the gateway's background sweep moves it on."""

from __future__ import annotations

import asyncio
import time

import redis

from producer.client import AsyncProducer
from producer.settings import ClientSettings
from schemas import Keys
from tests.integration.gateway.batch_files import completions_file
from tests.integration.gateway.conftest import GatewayApp
from tests.integration.gateway.test_gateway_batches import client_of, create_batch, jsonl
from workers.gateway.batch_sweep import SWEEP_INTERVAL_S, BatchSweep
from workers.gateway.batches import BatchService

LINES = 20
TIMEOUT_S = 120.0


def test_a_batch_nobody_reads_ends_completed_with_its_files(gateway: GatewayApp) -> None:
    batch_file = completions_file(gateway.settings.base_model_name, lines=LINES, bad=False)
    keys = Keys(gateway.settings.prefix)
    key = keys.batch
    with (
        client_of(gateway) as client,
        redis.Redis.from_url(gateway.settings.effective_redis_url) as r,
    ):
        batch_id = create_batch(client, batch_file.content).id
        # Only Redis is read from here on: a read through the API would refresh the batch.
        seen: list[str] = []
        deadline = time.monotonic() + TIMEOUT_S
        while not seen or seen[-1] != "completed":
            assert time.monotonic() < deadline, f"batch {batch_id} moved only through {seen}"
            # Both in one transaction: the script that ends the batch unlists it with it.
            raw, score = (
                r.pipeline()
                .hget(key(batch_id), "status")
                .zscore(keys.open_batches, batch_id)
                .execute()
            )
            status = (raw or b"").decode()
            # The sweep reads the open batches' listing: in it until the batch ends.
            assert (score is not None) is (status != "completed"), (status, score)
            if not seen or status != seen[-1]:
                seen.append(status)
            time.sleep(SWEEP_INTERVAL_S / 10)
        assert "in_progress" in seen, seen
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "completed" and batch.output_file_id is not None
        assert batch.request_counts is not None and batch.request_counts.completed == LINES
        outputs = jsonl(client.files.content(batch.output_file_id).read())
        assert sorted(line["custom_id"] for line in outputs) == sorted(batch_file.expected)


async def sweep_until_final(app: GatewayApp, batch_id: str) -> list[str]:
    """Run a sweep of this process (as a gateway replica starting now would) until the
    batch ends; the statuses Redis showed after each round."""
    producer = AsyncProducer.from_settings(
        ClientSettings(redis_url=app.settings.redis_url, prefix=app.settings.prefix)
    )
    sweep = BatchSweep(BatchService(app.settings, producer))
    seen: list[str] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while seen[-1:] != ["completed"]:
            assert time.monotonic() < deadline, f"batch {batch_id} moved only through {seen}"
            await sweep.sweep_once()
            stored = await sweep.service.store.get_batch(batch_id)
            assert stored is not None
            seen.append(stored.batch.status.value)
            await asyncio.sleep(0.3)
    finally:
        await producer.aclose()
    return seen


def test_a_batch_from_before_the_open_listing_is_swept(gateway: GatewayApp) -> None:
    """A batch created before v1.4 is in no listing of open batches: a replica's first
    sweep finds it in the listing of all batches, lists it, and moves it on."""
    batch_file = completions_file(gateway.settings.base_model_name, lines=LINES, bad=False)
    keys = Keys(gateway.settings.prefix)
    with (
        client_of(gateway) as client,
        redis.Redis.from_url(gateway.settings.effective_redis_url) as r,
    ):
        batch_id = create_batch(client, batch_file.content).id
        r.zrem(keys.open_batches, batch_id)  # as v1.3's create script left it
        seen = asyncio.run(sweep_until_final(gateway, batch_id))
        assert seen[-1] == "completed" and r.zscore(keys.open_batches, batch_id) is None
