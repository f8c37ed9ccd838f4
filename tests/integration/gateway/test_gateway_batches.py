"""The OpenAI Batch API over the queue, driven by the official ``openai`` client."""

from __future__ import annotations

import io
import itertools
import time

import openai
import orjson
import pytest
import redis

from schemas import Keys
from tests.integration.gateway.batch_files import BAD_LINES, completions_file
from tests.integration.gateway.conftest import GatewayApp
from tests.integration.gateway.test_gateway_generate import assert_error

BATCH_TIMEOUT_S = 300.0


def client_of(app: GatewayApp, key: str = "unused") -> openai.OpenAI:
    """The official client on ``app``'s gateway."""
    return openai.OpenAI(base_url=app.url + "/v1", api_key=key, max_retries=0, timeout=120)


def run_to_end(
    client: openai.OpenAI, batch_id: str
) -> tuple[openai.types.Batch, list[tuple[int, int]]]:
    """Poll until the batch ends; the batch and the (completed, failed) counts seen."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        assert counts is not None
        seen.append((counts.completed, counts.failed))
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch, seen
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not end: {seen[-1:]}")


def jsonl(content: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in content.splitlines() if line.strip()]


@pytest.mark.timeout(BATCH_TIMEOUT_S + 60)
def test_openai_client_runs_a_batch_of_200_lines_and_5_bad_ones(gateway: GatewayApp) -> None:
    batch_file = completions_file(gateway.settings.base_model_name)
    with client_of(gateway) as client:
        uploaded = client.files.create(
            file=("in.jsonl", io.BytesIO(batch_file.content)), purpose="batch"
        )
        assert uploaded.bytes == len(batch_file.content) and uploaded.purpose == "batch"
        assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
        assert created.status in ("validating", "in_progress")
        batch, seen = run_to_end(client, created.id)
        assert batch.status == "completed", batch
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
        counts = batch.request_counts
        assert counts is not None
        assert (counts.total, counts.completed, counts.failed) == (205, 200, 5)
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(seen))

        assert batch.output_file_id and batch.error_file_id
        outputs = jsonl(client.files.content(batch.output_file_id).content)
        errors = jsonl(client.files.content(batch.error_file_id).content)
        assert client.batches.list(limit=100).data[0].id == batch.id
    texts = {line["custom_id"]: line["response"]["body"]["choices"][0]["text"] for line in outputs}  # type: ignore[index]
    assert set(texts) == set(batch_file.expected)
    # The kit is 98.5-100 % exact per task: where the rule and the model differ, the line
    # must say what the model says to the same request asked synchronously.
    wrong = [cid for cid, text in texts.items() if text != batch_file.expected[cid]]
    assert len(wrong) <= 6, wrong
    for custom_id in wrong:
        reply = gateway.request("POST", "/v1/completions", json=batch_file.bodies[custom_id])
        assert reply.json()["choices"][0]["text"] == texts[custom_id], custom_id
    assert all(line["response"]["body"]["object"] == "text_completion" for line in outputs)  # type: ignore[index]
    assert len(errors) == len(BAD_LINES)
    messages = sorted(str(line["error"]) for line in errors)
    for _, word in BAD_LINES:
        assert any(word in message for message in messages), (word, messages)


def test_cancel_ends_a_batch_cancelled_and_lines_not_run_never_run(
    gateway: GatewayApp, r: redis.Redis
) -> None:
    batch_file = completions_file(gateway.settings.base_model_name, lines=400, bad=False)
    with client_of(gateway) as client:
        uploaded = client.files.create(
            file=("big.jsonl", io.BytesIO(batch_file.content)), purpose="batch"
        )
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
        cancelling = client.batches.cancel(created.id)
        cancelled_at = time.time()
        assert cancelling.status in ("cancelling", "cancelled")
        batch, _ = run_to_end(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    keys = Keys(gateway.settings.prefix)
    statuses: dict[str, int] = {}
    for i in range(1, 401):
        job = f"batchjob.{created.id.removeprefix('batch_')}.{i}"
        status, started = r.hmget(keys.job(job), ["status", "started_at"])
        assert status is not None
        statuses[status.decode()] = statuses.get(status.decode(), 0) + 1
        if started is not None:  # the jobs that ran had started before the cancel
            assert float(started) <= cancelled_at + 1.0
    assert set(statuses) <= {"succeeded", "cancelled"}
    assert statuses.get("cancelled", 0) > 0
    counts = batch.request_counts
    assert counts is not None and counts.completed == statuses.get("succeeded", 0)


def test_unknown_ids_are_404_and_a_file_over_the_limit_is_413(gateway: GatewayApp) -> None:
    assert_error(gateway.request("GET", "/v1/files/file-nope"), 404, "not_found")
    assert_error(gateway.request("GET", "/v1/files/file-nope/content"), 404, "not_found")
    assert_error(gateway.request("DELETE", "/v1/files/file-nope"), 404, "not_found")
    assert_error(gateway.request("GET", "/v1/batches/batch_nope"), 404, "not_found")
    assert_error(gateway.request("POST", "/v1/batches/batch_nope/cancel"), 404, "not_found")
    body = {"input_file_id": "file-nope", "endpoint": "/v1/completions", "completion_window": "24h"}
    assert_error(gateway.request("POST", "/v1/batches", json=body), 404, "not_found")
    big = b"x" * (gateway.settings.max_file_bytes + 1)
    reply = gateway.request(
        "POST", "/v1/files", files={"file": ("big.jsonl", big)}, data={"purpose": "batch"}
    )
    message = assert_error(reply, 413, "payload_too_large")
    assert "max_file_bytes" in message
    with client_of(gateway) as client:
        with pytest.raises(openai.NotFoundError):
            client.batches.create(
                input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h"
            )
        uploaded = client.files.create(file=("x.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
        assert client.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(uploaded.id)
