"""The consumer's log lines about jobs, on a real Redis and a real engine: each names its
job and adapter in JSON fields, and INFO says nothing about single jobs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from schemas import Keys, codec
from tests.integration.queue import test_queue_consumer as consumer_tests
from tests.integration.queue.test_queue_consumer import make_consumer, push, wait_final
from workers.engine.engine import Engine
from workers.logs import LOGGERS, configure_logging
from workers.settings import WorkerSettings

# The consumer tests' synthetic kit, engine and client, shared rather than built twice.
kit, engine, client = consumer_tests.kit, consumer_tests.engine, consumer_tests.client


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    saved = {name: logging.getLogger(name).handlers[:] for name in LOGGERS}
    yield
    for name, handlers in saved.items():
        logging.getLogger(name).handlers[:] = handlers


async def run_jobs(
    r: redis.Redis, client: aioredis.Redis, engine: Engine, prefix: str
) -> dict[str, str]:
    """Three jobs (a1, a2, the base model) and a payload that is not a job; ids -> adapter."""
    keys = Keys(prefix)
    ids = push(r, keys, 3)
    bad = codec.as_text(r.xadd(keys.jobs, {"job": b"{not json"}))
    consumer = make_consumer(client, engine, prefix, "c-logs")
    consumer.start()
    await wait_final(r, keys, [*ids, bad])
    await consumer.stop(5)
    return {**dict(zip(ids, ("a1", "a2", ""), strict=True)), bad: ""}


@pytest.mark.timeout(120)
async def test_every_line_about_a_job_names_it_and_its_adapter(
    r: redis.Redis,
    client: aioredis.Redis,
    engine: Engine,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(WorkerSettings(log_level="DEBUG", log_format="json"))
    adapters = await run_jobs(r, client, engine, prefix)

    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    for job_id, adapter in adapters.items():
        about = [line for line in lines if job_id in line["msg"]]
        assert about, f"no line about {job_id}"
        assert all((line["job_id"], line["adapter"]) == (job_id, adapter) for line in about)
        assert all(line["level"] == "DEBUG" for line in about)
    ended = sorted(line["job_id"] for line in lines if " ended " in line["msg"])
    assert ended == sorted(adapters)


@pytest.mark.timeout(120)
async def test_at_info_the_same_run_logs_nothing_per_job(
    r: redis.Redis,
    client: aioredis.Redis,
    engine: Engine,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(WorkerSettings(log_level="INFO", log_format="json"))
    adapters = await run_jobs(r, client, engine, prefix)

    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert not [
        line for line in lines if "job_id" in line or any(i in line["msg"] for i in adapters)
    ]
