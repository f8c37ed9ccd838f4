"""Grouped handle calls in the served path: one ``stream_many`` call runs several jobs, an
error in one of them fails only that job, a cancel stops only that job's row.

An application of its own, with one model replica holding every demo adapter, no adapter
affinity (so that jobs of every adapter share calls), and a dispatch wait long enough
that the jobs submitted together are started within it on any machine: the tests can
then count calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from demo.tasks import heldout_inputs
from producer import Producer
from schemas import GenerationParams, JobStatus
from tests.integration.serve.conftest import MAX_NEW_TOKENS, MODELS, delete_prefix, e2e_settings
from workers import launch
from workers.engine.requests import GenerationRequest

# Base-model prompts on which the demo kit babbles up to max_new_tokens (see chaos).
LONG_PROMPT = "abcde" * 30
LONG_TOKENS = 512  # the server's cap (max_new_tokens): the job runs for seconds
PARAMS = {"max_new_tokens": MAX_NEW_TOKENS}


@pytest.fixture(scope="module")
def grouped_app(ray_serve: str, redis_url: str) -> Iterator[launch.Running]:
    settings = e2e_settings(
        redis_url,
        app_name="grouped",
        num_model_replicas=1,
        # Room for every demo adapter at once: the window starts all jobs together.
        max_adapters_per_replica=8,
        affinity_routing=False,
        dispatch_wait_ms=500.0,
        max_new_tokens=LONG_TOKENS,
    )
    running = launch.deploy(settings)
    yield running
    launch.shutdown(running)
    delete_prefix(redis_url, settings.prefix)


def stats(running: launch.Running) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model replica's and the consumer's stats."""
    return running.model.stats.remote().result(), running.consumer.stats.remote().result()


def grown(after: dict[str, Any], before: dict[str, Any], *names: str) -> list[float]:
    return [after[name] - before[name] for name in names]


def direct_text(running: launch.Running, adapter: str | None, prompt: str) -> str:
    request = GenerationRequest(adapter, prompt, params=GenerationParams(**PARAMS))
    return str(running.model.generate.remote(request).result().text)


def test_one_handle_call_serves_a_group_of_jobs(grouped_app: launch.Running) -> None:
    jobs = [(MODELS[i % len(MODELS)], text) for i, text in enumerate(heldout_inputs()[:10])]
    expected = [direct_text(grouped_app, adapter, text) for adapter, text in jobs]
    model_before, consumer_before = stats(grouped_app)
    with Producer.from_settings(grouped_app.settings) as producer:
        ids = producer.submit_many(
            [{"adapter": adapter, "prompt": text, "params": PARAMS} for adapter, text in jobs]
        )
        records = producer.wait_many(ids, 120)
    model_after, consumer_after = stats(grouped_app)
    assert [records[i].status for i in ids] == [JobStatus.SUCCEEDED] * len(jobs)
    # Each job got its own output back from the shared call.
    assert [records[i].result.text for i in ids if records[i].result] == expected
    calls, requests = grown(model_after, model_before, "group_calls", "group_requests")
    assert requests == len(jobs)
    assert calls == 1, (calls, requests)
    assert grown(consumer_after, consumer_before, "model_calls") == [1]
    # The jobs' Redis writes shared round trips too.
    batches, writes = grown(consumer_after, consumer_before, "redis_write_batches", "redis_writes")
    assert writes >= 2 * len(jobs) and batches < writes


def test_an_error_in_one_job_of_a_group_fails_only_it(grouped_app: launch.Running) -> None:
    texts = heldout_inputs()[10:14]
    expected = [direct_text(grouped_app, None, text) for text in texts]
    model_before, _ = stats(grouped_app)
    with Producer.from_settings(grouped_app.settings) as producer:
        good = [{"prompt": text, "params": PARAMS} for text in texts]
        # Over the server's cap: a validation error on the replica, for this request only.
        bad = {"prompt": texts[0], "params": {"max_new_tokens": LONG_TOKENS + 1}}
        ids = producer.submit_many([*good[:2], bad, *good[2:]])
        records = producer.wait_many(ids, 120)
    model_after, _ = stats(grouped_app)
    assert grown(model_after, model_before, "group_calls", "group_requests") == [1, 5]
    failed = records[ids[2]]
    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error is not None and failed.error.type.value == "validation"
    assert "max_new_tokens" in failed.error.message
    others = [records[i] for i in ids[:2] + ids[3:]]
    assert [r.status for r in others] == [JobStatus.SUCCEEDED] * 4
    assert [r.result.text for r in others if r.result] == expected


def test_a_cancel_stops_only_its_job_of_a_group(grouped_app: launch.Running) -> None:
    texts = heldout_inputs()[14:16]
    long_params = {"max_new_tokens": LONG_TOKENS}
    model_before, _ = stats(grouped_app)
    with Producer.from_settings(grouped_app.settings) as producer:
        ids = producer.submit_many(
            [
                {"prompt": LONG_PROMPT, "params": long_params},  # cancelled while it runs
                {"prompt": LONG_PROMPT[::-1], "params": long_params},  # left to finish
                *({"prompt": text, "params": PARAMS} for text in texts),
            ]
        )
        wait_for_text(producer, ids[0])
        assert producer.cancel(ids[0])
        records = producer.wait_many(ids, 180)
    model_after, _ = stats(grouped_app)
    assert grown(model_after, model_before, "group_calls", "group_requests") == [1, 4]
    assert records[ids[0]].status is JobStatus.CANCELLED
    assert [records[i].status for i in ids[1:]] == [JobStatus.SUCCEEDED] * 3
    # The replica stopped that request only: the other long one ran to its length.
    assert grown(model_after, model_before, "group_cancels") == [1]
    left = records[ids[1]].result
    assert left is not None and left.finish_reason == "length"
    assert left.completion_tokens == LONG_TOKENS
    # What the replica generated, less what the other jobs were given: the cancelled
    # row's tokens, fewer than it would have made.
    given = sum(r.result.completion_tokens for i in ids[1:] if (r := records[i]).result)
    cancelled_tokens = grown(model_after, model_before, "tokens_generated")[0] - given
    assert 0 < cancelled_tokens < LONG_TOKENS


def wait_for_text(producer: Producer, job_id: str, timeout_s: float = 60.0) -> None:
    """Until the job has streamed some text (it runs)."""
    for event in producer.events(job_id, timeout_s):
        if event.text:
            return
    raise AssertionError(f"{job_id} ended before it streamed text")
