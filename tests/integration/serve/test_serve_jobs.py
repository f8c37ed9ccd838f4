"""Jobs end to end: producer and redis-cli in, Serve on the demo kit, results in Redis."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import orjson
import redis

from demo.tasks import ADAPTER_RULES, expected_output
from schemas import JobStatus
from tests.conftest import redis_cli
from tests.integration.serve.conftest import (
    MAX_NEW_TOKENS,
    LiveApp,
    assert_events_end_with_status,
    events_of,
)

ADAPTERS: list[str | None] = [*ADAPTER_RULES, None]


def job_plan(prompts: list[str], count: int, seed: int) -> list[tuple[str | None, str]]:
    """``count`` (adapter, prompt) pairs over every demo adapter and the base model."""
    plan = [(ADAPTERS[i % len(ADAPTERS)], prompts[i % len(prompts)]) for i in range(count)]
    random.Random(seed).shuffle(plan)
    return plan


def raw_job(adapter: str | None, prompt: str) -> str:
    return orjson.dumps(
        {"adapter": adapter, "prompt": prompt, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
    ).decode()


def test_120_jobs_from_the_producer_and_redis_cli_give_each_adapters_output(
    live_app: LiveApp, kit_prompts: list[str], r: redis.Redis
) -> None:
    keys = live_app.keys
    plan = job_plan(kit_prompts, 120, seed=1)
    by_producer, by_cli = plan[:100], plan[100:]
    with live_app.producer() as producer:
        ids = producer.submit_many(
            [
                {"adapter": a, "prompt": p, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                for a, p in by_producer
            ]
        )
        # A plain client sends no id: the stream entry ID that XADD returns is the job id.
        ids += [
            redis_cli(live_app.redis_url, "XADD", keys.jobs, "*", "job", raw_job(a, p)).strip()
            for a, p in by_cli
        ]
        records = producer.wait_many(ids, timeout=240)

    wrong = {
        job_id: (adapter, prompt, records[job_id].status.value, records[job_id].result)
        for job_id, (adapter, prompt) in zip(ids, plan, strict=True)
        if records[job_id].status is not JobStatus.SUCCEEDED
        or records[job_id].result is None
        or records[job_id].result.text != expected_output(adapter, prompt)  # type: ignore[union-attr]
    }
    assert not wrong, f"{len(wrong)} of 120 jobs wrong: {list(wrong.items())[:5]}"
    assert r.xpending(keys.jobs, keys.group)["pending"] == 0
    for job_id in ids:
        assert r.ttl(keys.job(job_id)) > 0, f"{job_id} has no TTL"
        assert r.ttl(keys.job_events(job_id)) > 0, f"{job_id} events have no TTL"
        assert_events_end_with_status(r, keys, records[job_id])
    replicas = {records[job_id].result.replica for job_id in ids}  # type: ignore[union-attr]
    print(f"\n120 jobs answered by replicas {sorted(replicas, key=str)}")


def test_streamed_chunks_make_the_final_text_and_come_before_the_end(
    live_app: LiveApp, kit_prompts: list[str], r: redis.Redis
) -> None:
    keys = live_app.keys
    plan = job_plan(kit_prompts, 10, seed=2)
    with live_app.producer() as producer:
        ids = producer.submit_many(
            [
                {"adapter": a, "prompt": p, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                for a, p in plan
            ]
        )
        # A subscriber from the start sees every chunk, and the end last.
        seen = [(event.event, event.text) for event in producer.events(ids[0], timeout=120)]
        records = producer.wait_many(ids, timeout=120)
    assert seen[-1] == ("status", None)
    assert any(kind == "chunk" for kind, _ in seen[:-1])
    for job_id in ids:
        events = events_of(r, keys, job_id)
        chunks = [(entry, fields) for entry, fields in events if fields["event"] == "chunk"]
        final_entry = events[-1][0]
        text = records[job_id].result.text  # type: ignore[union-attr]
        assert "".join(fields["text"] for _, fields in chunks) == text
        assert chunks, f"{job_id}: no chunks"
        assert chunks[0][0] < final_entry  # stream IDs grow: the first chunk came earlier
        assert float(chunks[0][1]["ts"]) <= float(events[-1][1]["ts"])
    several = sum(1 for job_id in ids if len(events_of(r, keys, job_id)) > 3)
    assert several, "no job streamed more than one chunk"


def test_loraq_wait_follow_prints_the_text(live_app: LiveApp, kit_prompts: list[str]) -> None:
    prompt = kit_prompts[2]
    with live_app.producer() as producer:
        job_id = producer.submit(prompt, adapter="upper", params={"max_new_tokens": 16})
    started = time.monotonic()
    out = subprocess.run(
        [
            *(sys.executable, "-m", "producer.cli", "--redis-url", live_app.redis_url),
            *("--prefix", live_app.settings.prefix, "wait", "--follow", job_id),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert prompt.upper() in out.stdout, out
    assert time.monotonic() - started < 60


def test_forward_passes_mix_adapters_in_the_served_path(
    live_app: LiveApp, kit_prompts: list[str]
) -> None:
    with live_app.producer() as producer:
        ids = producer.submit_many(
            [
                {"adapter": a, "prompt": p, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                for a, p in job_plan(kit_prompts, 40, seed=3)
            ]
        )
        producer.wait_many(ids, timeout=120)
    stats = live_app.model_stats()
    mixed = {replica: s["multi_adapter_passes"] for replica, s in stats.items()}
    print(f"\nforward passes that held more than one adapter, per replica: {mixed}")
    assert sum(mixed.values()) > 0
    assert max(s["max_adapters_in_pass"] for s in stats.values()) >= 2
