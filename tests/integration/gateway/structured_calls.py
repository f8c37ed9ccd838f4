"""The mixed structured batch of tests/integration/engine/structured_kit.py through a served
app: as queue jobs, and as chat completions through the official ``openai`` client with
pydantic models (``client.chat.completions.parse``). Shared by the HF engine's test
(tests/integration/gateway/test_gateway_structured.py) and vLLM's
(tests/integration/vllm/test_vllm_openai.py)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any, Literal

import openai
import redis
from pydantic import BaseModel, Field

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
from tests.integration.gateway.conftest import GatewayApp, gateway_settings
from workers.settings import WorkerSettings


def kit_settings(redis_url: str, name: str, root: Path, **overrides: Any) -> WorkerSettings:
    """An application on the kit's base model and adapters (built under ``root``), with
    room for the whole mixed batch in one step."""
    base, adapters = build_models(root)
    return gateway_settings(
        redis_url,
        name,
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
        **overrides,
    )


def run_jobs(producer: Producer, rows: list[int]) -> dict[int, str]:
    """Each row of ``rows`` as a queue job, all submitted before any is waited for."""
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


def check_mixed_jobs(app: GatewayApp) -> None:
    """Every constrained job's text validates; every free job's equals its run alone."""
    client = redis.Redis.from_url(app.settings.redis_url)
    with Producer(client, prefix=app.settings.prefix) as producer:
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


def check_mixed_chat_rows(app: GatewayApp) -> None:
    """All rows at once through the client: each constrained answer parses into its model
    (or is one of the choices); each free answer equals its run alone."""
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
