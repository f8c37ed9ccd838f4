"""What the producer writes, read back with the real redis-cli binary (not redis-py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import redis

from producer import Producer
from producer.settings import DEFAULT_JOB_TTL_S
from schemas import JobStatus, Keys
from tests.conftest import redis_cli
from tests.integration.producer_api.worker_role import WorkerRole


def cli_hash(url: str, key: str) -> dict[str, str]:
    lines = redis_cli(url, "--no-raw", "HGETALL", key).splitlines()
    values = [json.loads(line.split(") ", 1)[1]) for line in lines if ") " in line]
    return dict(zip(values[::2], values[1::2], strict=True))


def cli_stream(url: str, key: str) -> list[dict[str, str]]:
    """The fields of each entry (entries of one field, as the jobs stream has)."""
    raw = redis_cli(url, "--raw", "XRANGE", key, "-", "+").splitlines()
    # --raw prints the entry id, then field and value, one per line.
    entries, i = [], 0
    while i < len(raw):
        i += 1  # the entry id
        entries.append({raw[i]: raw[i + 1]})
        i += 2
    return entries


def test_submit_writes_the_protocol_keys_and_fields(
    producer: Producer, redis_url: str, keys: Keys, prefix_keys: Callable[[], list[str]]
) -> None:
    job_id = producer.submit(
        "hello world",
        adapter="upper",
        params={"max_new_tokens": 5, "stop": ["END"]},
        metadata={"customer": 42},
        result_ttl=600,
    )

    assert prefix_keys() == sorted([keys.jobs, keys.job(job_id)])
    assert redis_cli(redis_url, "TYPE", keys.jobs).strip() == "stream"
    assert redis_cli(redis_url, "TYPE", keys.job(job_id)).strip() == "hash"

    (entry,) = cli_stream(redis_url, keys.jobs)
    assert list(entry) == ["job"]
    job = json.loads(entry["job"])
    assert job == {
        "id": job_id,
        "adapter": "upper",
        "prompt": "hello world",
        "params": {
            "max_new_tokens": 5,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "stop": ["END"],
        },
        "result_ttl": 600,
        "metadata": {"customer": 42},
    }

    record = cli_hash(redis_url, keys.job(job_id))
    assert set(record) == {"status", "adapter", "created_at", "attempts", "metadata", "entry"}
    assert record["entry"] == redis_cli(redis_url, "XRANGE", keys.jobs, "-", "+").split()[0]
    assert record["status"] == "queued"
    assert record["adapter"] == "upper"
    assert record["attempts"] == "0"
    assert json.loads(record["metadata"]) == {"customer": 42}
    assert float(record["created_at"]) > 1.7e9

    ttl = int(redis_cli(redis_url, "TTL", keys.job(job_id)))
    assert DEFAULT_JOB_TTL_S - 60 < ttl <= DEFAULT_JOB_TTL_S
    assert int(redis_cli(redis_url, "TTL", keys.jobs)) == -1  # the stream never expires


def test_base_model_job_has_empty_adapter_and_no_metadata(
    producer: Producer, redis_url: str, keys: Keys
) -> None:
    job_id = producer.submit(messages=[{"role": "user", "content": "hi"}])
    record = cli_hash(redis_url, keys.job(job_id))
    assert record["adapter"] == ""
    assert "metadata" not in record
    job = json.loads(cli_stream(redis_url, keys.jobs)[0]["job"])
    assert job["messages"] == [{"role": "user", "content": "hi"}]
    assert "prompt" not in job and "adapter" not in job


def test_job_ttl_comes_from_the_producer(r: redis.Redis, redis_url: str, prefix: str) -> None:
    producer = Producer(r, prefix=prefix, job_ttl_s=120)
    job_id = producer.submit("x")
    assert 60 < int(redis_cli(redis_url, "TTL", Keys(prefix).job(job_id))) <= 120


def test_duplicate_id_enqueues_once_and_returns_the_id(
    producer: Producer, redis_url: str, keys: Keys
) -> None:
    first = producer.submit("one", id="order-7")
    second = producer.submit("two", id="order-7")
    assert first == second == "order-7"
    assert redis_cli(redis_url, "XLEN", keys.jobs).strip() == "1"
    assert json.loads(cli_stream(redis_url, keys.jobs)[0]["job"])["prompt"] == "one"

    # Also once a worker has moved the job on: the record is never reset to queued.
    producer.client.hset(keys.job("order-7"), "status", "succeeded")
    assert producer.submit("three", id="order-7") == "order-7"
    assert redis_cli(redis_url, "XLEN", keys.jobs).strip() == "1"
    assert cli_hash(redis_url, keys.job("order-7"))["status"] == "succeeded"


def test_generated_ids_are_unique_and_sort_by_time(producer: Producer) -> None:
    ids = [producer.submit(f"p{i}") for i in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)


def test_waits_for_a_job_sent_with_plain_redis_cli(
    producer: Producer, redis_url: str, keys: Keys, worker: WorkerRole
) -> None:
    """The protocol's plain-client path: XADD without an id, the entry ID is the job id."""
    entry_id = redis_cli(redis_url, "XADD", keys.jobs, "*", "job", '{"prompt":"hello"}').strip()
    assert producer.get(entry_id) is None

    finisher = threading.Timer(0.2, worker.finish, args=(entry_id,))
    finisher.start()
    record = producer.wait(entry_id, timeout=10)
    finisher.join()
    assert record.status is JobStatus.SUCCEEDED
    assert record.result is not None and record.result.text == "done"
