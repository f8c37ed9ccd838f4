"""The OpenAI Batch API over the queue, driven by the official ``openai`` client."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import time
from typing import Any

import openai
import orjson
import pytest
import redis

from schemas import Job, Keys
from schemas.batches import BatchEndpoint
from tests.integration.gateway.batch_files import (
    BAD_LINES,
    BatchFile,
    answer_text,
    completions_file,
)
from tests.integration.gateway.conftest import GatewayApp
from tests.integration.gateway.test_gateway_generate import assert_error
from workers.scheduling.planner import Limits, ReplicaView, WindowJob, plan

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


def create_batch(
    client: openai.OpenAI, content: bytes, endpoint: BatchEndpoint = "/v1/completions"
) -> openai.types.Batch:
    """Upload ``content`` and start a batch over it."""
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h"
    )


def loraq_batch(app: GatewayApp, *args: str) -> str:
    """The stdout of ``loraq batch ARGS`` against ``app``'s gateway (it must succeed)."""
    run = subprocess.run(
        [sys.executable, "-m", "producer.cli", "batch", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "LORAQ_GATEWAY_URL": app.url},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def jsonl(content: bytes) -> list[Any]:
    return [orjson.loads(line) for line in content.splitlines() if line.strip()]


def assert_rule_outputs(
    app: GatewayApp, batch_file: BatchFile, outputs: list[Any], endpoint: BatchEndpoint
) -> None:
    """One output line per good line, in ``endpoint``'s response shape, each the rule's
    output. The kit is 98.5-100 % exact per task: where the rule and the model differ,
    the line must say what the model says to the same request asked synchronously."""
    shape = "text_completion" if endpoint == "/v1/completions" else "chat.completion"
    assert all(line["response"]["body"]["object"] == shape for line in outputs)
    texts = {line["custom_id"]: answer_text(line["response"]["body"]) for line in outputs}
    assert set(texts) == set(batch_file.expected) and len(texts) == len(outputs)
    wrong = [cid for cid, text in texts.items() if text != batch_file.expected[cid]]
    assert len(wrong) <= max(1, len(texts) * 3 // 100), wrong
    for custom_id in wrong:
        reply = app.request("POST", endpoint, json=batch_file.bodies[custom_id])
        assert answer_text(reply.json()) == texts[custom_id], custom_id


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
    assert_rule_outputs(gateway, batch_file, outputs, "/v1/completions")
    assert len(errors) == len(BAD_LINES)
    messages = sorted(str(line["error"]) for line in errors)
    for _, word in BAD_LINES:
        assert any(word in message for message in messages), (word, messages)


@pytest.mark.parametrize("canceller", ["openai", "cli"])
def test_cancel_ends_a_batch_cancelled_and_lines_not_run_never_run(
    gateway: GatewayApp, r: redis.Redis, canceller: str
) -> None:
    batch_file = completions_file(gateway.settings.base_model_name, lines=400, bad=False)
    with client_of(gateway) as client:
        created = create_batch(client, batch_file.content)
        if canceller == "openai":
            status = client.batches.cancel(created.id).status
        else:
            status = loraq_batch(gateway, "cancel", created.id).split("\t")[1]
        cancelled_at = time.time()
        assert status in ("cancelling", "cancelled")
        batch, _ = run_to_end(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    keys = Keys(gateway.settings.prefix)
    statuses: dict[str, int] = {}
    for i in range(1, 401):
        job = f"batchjob.{created.id.removeprefix('batch_')}.{i}"
        status, started = r.hmget(keys.job(job), ["status", "started_at"])
        # No record: the line was not queued yet (lines are queued in the background
        # after the create answers) when the cancel stopped the queueing.
        name = "never queued" if status is None else status.decode()
        statuses[name] = statuses.get(name, 0) + 1
        if started is not None:  # the jobs that ran had started before the cancel
            assert float(started) <= cancelled_at + 1.0
    assert set(statuses) <= {"succeeded", "cancelled", "never queued"}
    assert statuses.get("cancelled", 0) + statuses.get("never queued", 0) > 0
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


def test_a_chat_completions_batch_answers_in_the_chat_shape(gateway: GatewayApp) -> None:
    batch_file = completions_file(
        gateway.settings.base_model_name, lines=12, bad=False, endpoint="/v1/chat/completions"
    )
    with client_of(gateway) as client:
        created = create_batch(client, batch_file.content, "/v1/chat/completions")
        batch, _ = run_to_end(client, created.id)
        assert batch.status == "completed" and batch.endpoint == "/v1/chat/completions"
        assert batch.request_counts is not None and batch.request_counts.completed == 12
        assert batch.output_file_id and not batch.error_file_id
        outputs = jsonl(client.files.content(batch.output_file_id).content)
    assert all(
        line["response"]["body"]["choices"][0]["message"]["role"] == "assistant" for line in outputs
    )
    assert_rule_outputs(gateway, batch_file, outputs, "/v1/chat/completions")


def test_listing_pages_as_openai_and_the_client_pages_through_it(gateway: GatewayApp) -> None:
    with client_of(gateway) as client:
        # Batches of one bad line each: nothing to run, they end at their first read.
        mine = [create_batch(client, b"{not json\n").id for _ in range(3)]
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == mine[:0:-1] and page.has_more
        listed = [batch.id for batch in client.batches.list(limit=2)]  # pages on `after`
    assert listed[:3] == mine[::-1] and len(listed) == len(set(listed))
    reply = gateway.request("GET", "/v1/batches", params={"limit": 2}).json()
    assert (reply["first_id"], reply["last_id"], reply["has_more"]) == (mine[2], mine[1], True)
    reply = gateway.request("GET", "/v1/batches", params={"after": mine[2], "limit": 1}).json()
    assert [b["id"] for b in reply["data"]] == [mine[1]] and reply["first_id"] == mine[1]
    everything = gateway.request("GET", "/v1/batches", params={"limit": 100}).json()
    assert [b["id"] for b in everything["data"]] == listed and not everything["has_more"]
    last = gateway.request("GET", "/v1/batches", params={"after": listed[-1]}).json()
    assert last == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_batch_jobs_are_queued_below_interactive_ones(gateway: GatewayApp, r: redis.Redis) -> None:
    lines = 120  # past the consumer's max_in_flight (32), within its window (256)
    batch_file = completions_file(gateway.settings.base_model_name, lines=lines, bad=False)
    with client_of(gateway) as client:
        created = create_batch(client, batch_file.content)
        # Its lines are queued in the background: the interactive job must come after all.
        while client.batches.retrieve(created.id).status == "validating":
            time.sleep(0.05)
        reply = gateway.request("POST", "/v1/jobs", json={"adapter": "upper", "prompt": "ab cd"})
        assert reply.status_code == 202, reply.text
        [interactive] = reply.json()["ids"]
        assert run_to_end(client, created.id)[0].status == "completed"
    assert gateway.wait(interactive)["status"] == "succeeded"
    batch_jobs = f"batchjob.{created.id.removeprefix('batch_')}."
    window: list[WindowJob] = []
    for _, fields in r.xrange(Keys(gateway.settings.prefix).jobs):
        job = Job.model_validate_json(fields[b"job"])
        if job.id == interactive or (job.id or "").startswith(batch_jobs):
            # As the consumer's window sees them, all arrived within the aging bound.
            window.append(WindowJob(job.id or "", job.adapter_name, job.priority or 0, 0.0))
    priorities = {job.key: job.priority for job in window}
    assert priorities.pop(interactive) == 0
    assert set(priorities.values()) == {gateway.settings.batch_priority}
    assert len(priorities) == lines and gateway.settings.batch_priority < 0
    # Queued last, the interactive job started before many of the batch's lines (in
    # stream order, FIFO, it would start after all of them). Loose on purpose: the lines
    # that ran before it depend on how fast its POST came after the batch's.
    keys = Keys(gateway.settings.prefix)
    started = {key: float(r.hget(keys.job(key), "started_at") or 0) for key in priorities}
    interactive_started = float(r.hget(keys.job(interactive), "started_at") or 0)
    assert sum(t > interactive_started for t in started.values()) >= lines // 4, started
    # With one free slot, the queued interactive job goes before the batch's lines ahead
    # of it in the stream: the scheduling policy the consumers run, fed these entries.
    adapters = tuple({job.adapter for job in window if job.adapter})
    replica = ReplicaView(id="model", slots=len(adapters), warm=adapters, running={})
    limits = Limits(free=1, max_jobs=1, max_passover_s=gateway.settings.max_passover_s)
    assert window[-1].key == interactive
    assert plan(window, [replica], limits, now=0.0).dispatch[0].key == interactive
