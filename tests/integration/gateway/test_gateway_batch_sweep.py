"""A batch ends with nobody reading it: the gateway's background sweep moves it on."""

from __future__ import annotations

import time

import redis

from schemas import Keys
from tests.integration.gateway.batch_files import completions_file
from tests.integration.gateway.conftest import GatewayApp
from tests.integration.gateway.test_gateway_batches import client_of, create_batch, jsonl
from workers.gateway.batch_sweep import SWEEP_INTERVAL_S

LINES = 20
TIMEOUT_S = 120.0


def test_a_batch_nobody_reads_ends_completed_with_its_files(gateway: GatewayApp) -> None:
    batch_file = completions_file(gateway.settings.base_model_name, lines=LINES, bad=False)
    key = Keys(gateway.settings.prefix).batch
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
            status = (r.hget(key(batch_id), "status") or b"").decode()
            if not seen or status != seen[-1]:
                seen.append(status)
            time.sleep(SWEEP_INTERVAL_S / 10)
        assert "in_progress" in seen, seen
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "completed" and batch.output_file_id is not None
        assert batch.request_counts is not None and batch.request_counts.completed == LINES
        outputs = jsonl(client.files.content(batch.output_file_id).read())
        assert sorted(line["custom_id"] for line in outputs) == sorted(batch_file.expected)
