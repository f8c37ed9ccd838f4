"""The consumer loop with a real Redis and a real engine (no Serve): back-pressure, resume
of its own pending entries, reclaim of a dead consumer's, a running job cancelled,
shutdown that lets jobs finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from producer import Producer
from schemas import JobStatus, Keys, codec
from tests.integration.resolving import Resolving
from workers.engine.engine import Engine
from workers.engine.synthetic import LoraSpec, build_llama, build_lora
from workers.queue.consumer import QueueConsumer
from workers.queue.runner import JobRunner
from workers.queue.store import JobStore
from workers.settings import WorkerSettings


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("consumer-kit")
    build_llama(root / "model")
    for seed, name in enumerate(("a1", "a2")):
        spec = LoraSpec(rank=4, target_modules=("q_proj", "v_proj"), seed=seed)
        build_lora(root / "model", root / "adapters" / name, spec)
    return root


@pytest.fixture(scope="module")
def engine(kit: Path) -> Iterator[Engine]:
    settings = WorkerSettings(model=str(kit / "model"), adapter_dir=str(kit / "adapters"))
    # Names resolved above the engine, as a model replica does.
    engine = Resolving(Engine.from_settings(settings), settings)
    yield engine  # type: ignore[misc]
    asyncio.run(engine.close())


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def make_consumer(
    client: aioredis.Redis, engine: Engine, prefix: str, name: str, **overrides: object
) -> QueueConsumer:
    settings = WorkerSettings(
        prefix=prefix,
        read_block_ms=50,
        lease_renew_s=0.2,
        **overrides,  # type: ignore[arg-type]
    )
    store = JobStore(client, Keys(prefix), events_maxlen=1000)
    return QueueConsumer(store, JobRunner(store, engine, settings, name), settings, name)


def push(r: redis.Redis, keys: Keys, count: int, max_new_tokens: int = 8) -> list[str]:
    ids = []
    for i in range(count):
        job = {"adapter": ("a1", "a2", None)[i % 3], "prompt": f"job {i}"}
        job["params"] = {"max_new_tokens": max_new_tokens}  # type: ignore[assignment]
        ids.append(codec.as_text(r.xadd(keys.jobs, {"job": orjson.dumps(job)})))
    return ids


async def wait_final(r: redis.Redis, keys: Keys, ids: list[str], timeout_s: float = 60) -> None:
    for _ in range(int(timeout_s * 20)):
        statuses = [r.hget(keys.job(job_id), "status") for job_id in ids]
        if all(s in (b"succeeded", b"failed", b"cancelled", b"expired") for s in statuses):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"jobs not final: {statuses}")


def statuses(r: redis.Redis, keys: Keys, ids: list[str]) -> set[str]:
    return {codec.as_text(r.hget(keys.job(job_id), "status") or b"") for job_id in ids}


async def test_the_consumer_never_holds_more_than_its_free_slots(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    # With the window off it claims only what it can run.
    most, running = await claimed_and_running(client, engine, r, prefix, schedule_window=0)
    assert 0 < most <= 3
    assert running <= 3


async def test_the_window_claims_no_more_than_its_size_and_runs_no_more_than_its_slots(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    most, running = await claimed_and_running(client, engine, r, prefix, schedule_window=6)
    assert 3 < most <= 6 + 3
    assert running <= 3


async def claimed_and_running(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str, *, schedule_window: int
) -> tuple[int, int]:
    """The most entries a consumer (3 in-flight slots) held claimed, and ran at once, over
    12 jobs; all of them succeed and none is left pending."""
    keys = Keys(prefix)
    consumer = make_consumer(
        client, engine, prefix, "c-0", max_in_flight=3, schedule_window=schedule_window
    )
    await consumer.store.ensure_group()
    ids = push(r, keys, 12, max_new_tokens=24)
    consumer.start()
    most = running = 0
    while statuses(r, keys, ids) != {JobStatus.SUCCEEDED.value}:
        most = max(most, r.xpending(keys.jobs, keys.group)["pending"])
        running = max(running, len(consumer.in_flight))
        consumer.raise_if_dead()
        await asyncio.sleep(0.01)
    await consumer.stop(5)
    assert r.xpending(keys.jobs, keys.group)["pending"] == 0
    assert consumer.stats().counters.finished == 12
    return most, running


async def test_a_restarted_consumer_first_runs_its_own_pending_entries(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    consumer = make_consumer(client, engine, prefix, "c-0")
    await consumer.store.ensure_group()
    ids = push(r, keys, 3)
    # The same consumer name took them, then died before answering.
    r.xreadgroup(keys.group, "c-0", {keys.jobs: ">"}, count=3)
    consumer.start()
    await wait_final(r, keys, ids)
    await consumer.stop(5)
    assert statuses(r, keys, ids) == {"succeeded"}
    assert consumer.stats().counters.reclaimed == 0


async def test_entries_of_a_dead_consumer_are_reclaimed_after_the_visibility_timeout(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    consumer = make_consumer(client, engine, prefix, "c-1", visibility_timeout_s=0.3)
    await consumer.store.ensure_group()
    ids = push(r, keys, 2)
    r.xreadgroup(keys.group, "dead-consumer", {keys.jobs: ">"}, count=2)
    consumer.start()
    await wait_final(r, keys, ids)
    await consumer.stop(5)
    assert statuses(r, keys, ids) == {"succeeded"}
    assert consumer.stats().counters.reclaimed == 2
    assert r.xpending(keys.jobs, keys.group)["pending"] == 0


async def test_stopping_lets_in_flight_jobs_finish(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    consumer = make_consumer(client, engine, prefix, "c-0", max_in_flight=4)
    await consumer.store.ensure_group()
    ids = push(r, keys, 4, max_new_tokens=32)
    consumer.start()
    while r.xpending(keys.jobs, keys.group)["pending"] < 4:
        await asyncio.sleep(0.01)
    await consumer.stop(60)
    assert statuses(r, keys, ids) == {"succeeded"}
    assert r.xpending(keys.jobs, keys.group)["pending"] == 0
    consumer.raise_if_dead()  # a stopped consumer is not a dead one


async def test_a_running_job_whose_cancellation_is_requested_ends_cancelled(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    consumer = make_consumer(client, engine, prefix, "c-0", cancel_poll_s=0.05)
    await consumer.store.ensure_group()
    producer = Producer(r, prefix=prefix)
    job_id = producer.submit("a long one", params={"max_new_tokens": 512})
    consumer.start()
    while r.hget(keys.job(job_id), "status") != b"running":
        await asyncio.sleep(0.01)
    assert producer.cancel(job_id)
    await wait_final(r, keys, [job_id])
    consumer.raise_if_dead()
    await consumer.stop(5)
    assert statuses(r, keys, [job_id]) == {"cancelled"}
    assert r.xpending(keys.jobs, keys.group)["pending"] == 0


async def until_stream_length(r: redis.Redis, keys: Keys, length: int) -> None:
    for _ in range(100):
        if r.xlen(keys.jobs) == length:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{keys.jobs} has {r.xlen(keys.jobs)} entries, not {length}")


async def test_the_consumer_trims_acknowledged_entries_and_keeps_pending_ones(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    consumer = make_consumer(client, engine, prefix, "c-0", trim_interval_s=0.1)
    await consumer.store.ensure_group()
    ids = push(r, keys, 4)
    consumer.start()
    await wait_final(r, keys, ids)
    await until_stream_length(r, keys, 0)
    # Another live consumer takes a new entry (in one transaction, so c-0 cannot take it).
    with r.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.jobs, {"job": orjson.dumps({"prompt": "held"})})
        pipe.xreadgroup(keys.group, "other", {keys.jobs: ">"}, count=1)
        held = codec.as_text(pipe.execute()[0])
    await asyncio.sleep(0.5)  # several trim intervals
    consumer.raise_if_dead()
    await consumer.stop(5)
    assert [codec.as_text(i) for i, _ in r.xrange(keys.jobs)] == [held]
    assert r.xpending(keys.jobs, keys.group)["pending"] == 1


async def test_an_entry_over_the_size_bound_is_failed_unread_beside_good_jobs(
    client: aioredis.Redis, engine: Engine, r: redis.Redis, prefix: str
) -> None:
    # Megabytes of empty arrays: seconds for a JSON parser to build, refused by size.
    hostile = b'{"id": "huge-1", "prompt": "hi", "pad": [' + b"[]," * 2_000_000 + b"[]]}"
    keys = Keys(prefix)
    consumer = make_consumer(client, engine, prefix, "c-0")
    await consumer.store.ensure_group()
    before = push(r, keys, 2)
    r.xadd(keys.jobs, {"job": hostile})
    ids = [*before, "huge-1", *push(r, keys, 2)]
    consumer.start()
    await wait_final(r, keys, ids)
    consumer.raise_if_dead()
    await consumer.stop(5)
    record = {codec.as_text(k): codec.as_text(v) for k, v in r.hgetall(keys.job("huge-1")).items()}
    assert record["status"] == "failed"
    error = orjson.loads(record["error"])
    assert error["type"] == "validation"
    assert f"{len(hostile)} bytes as JSON, over the protocol's" in error["message"]
    assert statuses(r, keys, [i for i in ids if i != "huge-1"]) == {"succeeded"}
    assert r.xpending(keys.jobs, keys.group)["pending"] == 0
    [(_, letter)] = r.xrange(keys.dead)
    assert codec.decode_fields(letter)["id"] == "huge-1"
