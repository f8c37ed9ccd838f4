"""Nothing of a batch stays in Redis past its TTL: files, batch, listing, job records."""

from __future__ import annotations

import asyncio
import time

import redis

from producer.client import AsyncProducer
from producer.settings import ClientSettings
from schemas.batches import BatchCreate
from tests.integration.gateway.batch_files import completions_file
from tests.integration.gateway.conftest import GatewayApp
from workers.gateway.auth import ANYONE
from workers.gateway.batches import BatchService

TTL_S = 4


async def run_batch(app: GatewayApp, content: bytes) -> tuple[str, list[str]]:
    """A batch run by the app's consumer, through a BatchService with short TTLs."""
    settings = app.settings.model_copy(update={"batch_ttl_s": TTL_S, "file_ttl_s": TTL_S})
    producer = AsyncProducer.from_settings(
        ClientSettings(redis_url=settings.redis_url, prefix=settings.prefix)
    )
    service = BatchService(settings, producer)
    try:
        uploaded = await service.upload("in.jsonl", content, None)
        body = BatchCreate(input_file_id=uploaded.id, endpoint="/v1/completions")
        batch = await service.create(body, ANYONE)
        deadline = time.monotonic() + 120
        while not batch.status.is_final and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            stored = await service.store.get_batch(batch.id)
            assert stored is not None, "the batch expired before it ended"
            batch = await service.refresh(stored)
        assert batch.status.value == "completed", batch
        files = [uploaded.id, batch.output_file_id or "", batch.error_file_id or ""]
        return batch.id, files
    finally:
        await producer.aclose()


def test_redis_holds_nothing_of_a_batch_after_its_ttl(gateway: GatewayApp, r: redis.Redis) -> None:
    content = completions_file(gateway.settings.base_model_name, lines=8).content
    batch_id, files = asyncio.run(run_batch(gateway, content))
    hex_id = batch_id.removeprefix("batch_")
    time.sleep(TTL_S + 1.5)
    prefix = gateway.settings.prefix
    left = [
        key
        for key in r.scan_iter(match=f"{prefix}:*", count=1000)
        if hex_id.encode() in key or any(f.encode() in key for f in files if f)
    ]
    assert left == []
    # The listing drops the expired id when it is next read.
    assert gateway.request("GET", "/v1/batches", params={"limit": 100}).status_code == 200
    assert r.zscore(f"{prefix}:batches", batch_id) is None
