"""Structured output through the served app: the mixed batch of 64 rows over 8 adapters
(half constrained) through the queue, and through the official ``openai`` client with
pydantic models (``client.chat.completions.parse``)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
import redis
from pydantic import BaseModel, Field
from ray import serve

from producer.client import Producer
from schemas import JobStatus
from tests.integration.engine.structured_kit import (
    ADAPTERS,
    CHOICES,
    MAX_NEW_TOKENS,
    ROWS,
    build_models,
    check_constrained,
    response_format,
    row_adapter,
    row_params,
    row_prompt,
)
from tests.integration.gateway.conftest import GatewayApp, deploy, gateway_settings
from tests.integration.serve.conftest import delete_prefix


@pytest.fixture(scope="module")
def app(
    ray_serve: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayApp]:
    base, adapters = build_models(tmp_path_factory.mktemp("gw-structured"))
    settings = gateway_settings(
        redis_url,
        "gwjson",
        model=str(base),
        adapter_dir=str(adapters),
        adapters={},
        max_adapters_per_replica=len(ADAPTERS),
        max_batch_size=ROWS,
        max_in_flight=ROWS,
        max_ongoing_requests=ROWS,
        batch_wait_ms=50,
        max_input_tokens=64,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    app = deploy(settings, ray_serve)
    yield app
    serve.delete(settings.app_name)
    delete_prefix(redis_url, settings.prefix)


def run_jobs(producer: Producer, rows: list[int]) -> dict[int, str]:
    ids = {
        row: producer.submit(row_prompt(row), adapter=row_adapter(row), params=row_params(row))
        for row in rows
    }
    texts: dict[int, str] = {}
    for row, job_id in ids.items():
        record = producer.wait(job_id, timeout=240)
        assert record.status is JobStatus.SUCCEEDED, record
        assert record.result is not None
        assert record.result.finish_reason == "stop" or response_format(row) is None, record
        texts[row] = record.result.text
    return texts


@pytest.mark.timeout(400)
def test_mixed_jobs_through_the_queue(app: GatewayApp, redis_url: str) -> None:
    with Producer(redis.Redis.from_url(redis_url), prefix=app.settings.prefix) as producer:
        texts = run_jobs(producer, list(range(ROWS)))
        free = [r for r in range(ROWS) if response_format(r) is None]
        alone = run_jobs(producer, free)
    for row in range(ROWS):
        if response_format(row) is not None:
            check_constrained(row, texts[row])
    assert {r: texts[r] for r in free} == alone


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    ok: bool


class Label(BaseModel):
    label: Literal["spam", "ham", "other"]


class Item(BaseModel):
    k: str = Field(max_length=5)
    v: int = Field(ge=-9, le=99)


class Items(BaseModel):
    items: list[Item] = Field(max_length=3)


MODELS: list[type[BaseModel]] = [Person, Label, Items, Label]


def ask(client: openai.OpenAI, row: int) -> str | BaseModel:
    """Row ``row`` as a chat completion: free rows plain, even rows through ``parse`` with
    a pydantic model (one in four a ``choice``, which the client passes through)."""
    common: dict[str, Any] = {
        "model": row_adapter(row),
        "messages": [{"role": "user", "content": row_prompt(row)}],
        "max_tokens": MAX_NEW_TOKENS,
        "temperature": 0,
    }
    if row % 2:
        reply = client.chat.completions.create(**common)
        return reply.choices[0].message.content or ""
    if row % 8 == 6:
        fmt = {"type": "choice", "choices": CHOICES}
        reply = client.chat.completions.create(**common, response_format=fmt)  # type: ignore[arg-type]
        return reply.choices[0].message.content or ""
    parsed = client.chat.completions.parse(**common, response_format=MODELS[row // 2 % 4])
    message = parsed.choices[0].message
    assert message.parsed is not None, message
    return message.parsed


@pytest.mark.timeout(400)
def test_mixed_rows_through_the_openai_client(app: GatewayApp) -> None:
    with (
        openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0) as client,
        concurrent.futures.ThreadPoolExecutor(ROWS) as pool,
    ):
        answers = list(pool.map(lambda row: ask(client, row), range(ROWS)))
        free = [r for r in range(ROWS) if r % 2]
        alone = list(pool.map(lambda row: ask(client, row), free))
    for row, answer in enumerate(answers):
        if row % 8 == 6:
            assert answer in CHOICES
        elif row % 2 == 0:
            assert isinstance(answer, MODELS[row // 2 % 4]), answer
    assert [answers[r] for r in free] == alone


def test_a_bad_response_format_answers_400_naming_it(app: GatewayApp) -> None:
    with openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0) as client:
        bad = {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}},
        }
        with pytest.raises(openai.BadRequestError, match="unsupported keyword 'not'"):
            client.chat.completions.create(
                model=ADAPTERS[0],
                messages=[{"role": "user", "content": "x"}],
                response_format=bad,  # type: ignore[arg-type]
            )
        with pytest.raises(openai.BadRequestError, match="Lookahead"):
            client.chat.completions.create(
                model=ADAPTERS[0],
                messages=[{"role": "user", "content": "x"}],
                response_format={"type": "regex", "pattern": "(?=a)b"},  # type: ignore[arg-type]
            )
