"""`loraq dead list | retry | purge` against real Redis, on letters the real store wrote."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from producer import Producer
from producer.cli import main
from schemas import JobStatus, Keys, codec
from workers.queue.store import FinalWrite, JobStore

ERROR = {"type": "attempts_exhausted", "message": "started 3 times"}


async def _dead_letter(redis_url: str, keys: Keys, job_id: str, payload: str) -> None:
    """Act as a consumer: take the job's entry and end it failed with a dead-letter copy."""
    client = aioredis.Redis.from_url(redis_url)
    store = JobStore(client, keys, events_maxlen=100)
    await store.ensure_group()
    (entry,) = await store.read("c-0", count=1, block_ms=100)
    await store.finish(
        FinalWrite(
            entry_id=entry.entry_id,
            job_id=job_id,
            status=JobStatus.FAILED,
            adapter=None,
            created_at=1.0,
            ttl_s=600,
            fields={"error": codec.dumps(ERROR)},
            dead_payload=payload,
            dead_error=codec.dumps(ERROR),
        )
    )
    await client.aclose()


def dead_job(redis_url: str, producer: Producer, payload: str | None = None) -> str:
    """Submit a job and dead-letter it the way the consumer does; its dead-letter id."""
    job_id = producer.submit("hello", params={"max_new_tokens": 4})
    if payload is None:
        ((_, fields),) = producer.client.xrange(producer.keys.jobs)
        payload = codec.as_text(fields[b"job"])
    asyncio.run(_dead_letter(redis_url, producer.keys, job_id, payload))
    ((dead_id, _),) = producer.client.xrevrange(producer.keys.dead, count=1)
    return codec.as_text(dead_id)


def cli(redis_url: str, prefix: str, *args: str) -> int:
    return main(["--redis-url", redis_url, "--prefix", prefix, "dead", *args])


def test_list_shows_letters_as_json_and_text(
    redis_url: str, prefix: str, producer: Producer, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_id = dead_job(redis_url, producer)
    assert cli(redis_url, prefix, "list", "--json") == 0
    out, err = capsys.readouterr()
    (letter,) = [orjson.loads(line) for line in out.splitlines()]
    assert letter["dead_id"] == dead_id
    assert letter["error"] == ERROR
    assert orjson.loads(letter["payload"])["prompt"] == "hello"
    assert "1 of 1 dead letters" in err
    with pytest.raises(SystemExit) as refused:
        cli(redis_url, prefix, "list", "--limit", "0")
    assert refused.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert cli(redis_url, prefix, "list") == 0
    assert "attempts_exhausted: started 3 times" in capsys.readouterr().out


def test_retry_requeues_the_job_and_a_consumer_takes_it(
    redis_url: str,
    prefix: str,
    producer: Producer,
    r: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead_id = dead_job(redis_url, producer)
    job_id = codec.as_text(r.xrange(producer.keys.dead)[0][1][b"id"])
    assert producer.get(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]

    assert cli(redis_url, prefix, "retry", dead_id) == 0
    assert capsys.readouterr().out.strip() == job_id

    record = producer.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED
    assert record.attempts == 0 and record.error is None and record.finished_at is None
    assert r.xlen(producer.keys.dead) == 0
    assert r.exists(producer.keys.job_events(job_id)) == 0
    # The group reads it as a new entry: back in the stream, undelivered.
    entries = r.xreadgroup(producer.keys.group, "c-1", {producer.keys.jobs: ">"}, count=10)
    ((_, ((_, fields),)),) = entries
    assert orjson.loads(fields[b"job"])["id"] == job_id


def test_retry_refuses_unknown_ids_and_letters_without_payload(
    redis_url: str,
    prefix: str,
    producer: Producer,
    r: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead_id = dead_job(redis_url, producer, payload="{not json")
    stream_length = r.xlen(producer.keys.jobs)
    assert cli(redis_url, prefix, "retry", dead_id) == 1
    assert "payload is not a JSON object" in capsys.readouterr().err
    assert r.xlen(producer.keys.dead) == 1
    assert r.xlen(producer.keys.jobs) == stream_length

    assert cli(redis_url, prefix, "retry", "1-1") == 1
    assert "no dead letter with this id" in capsys.readouterr().err
    assert cli(redis_url, prefix, "retry", "not-an-id") == 1
    assert "not a dead letter id" in capsys.readouterr().err


def test_purge_needs_yes(
    redis_url: str,
    prefix: str,
    producer: Producer,
    r: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead_job(redis_url, producer)
    assert cli(redis_url, prefix, "purge") == 2
    assert "1 dead letters would be deleted" in capsys.readouterr().err
    assert r.xlen(producer.keys.dead) == 1
    assert cli(redis_url, prefix, "purge", "--yes") == 0
    assert "deleted 1 dead letters" in capsys.readouterr().err
    assert r.exists(producer.keys.dead) == 0
