"""Tenants over HTTP: a key submits as its own tenant, only an admin key names another,
and a tenant over its rate gets 429 with Retry-After (the enqueue script's bucket, on
real Redis). The gateway app in-process: no route here reaches the model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from producer import Producer, RateLimitedError
from schemas import Keys
from tests.integration.gateway.conftest import API_KEYS, bearer, gateway_settings
from tests.integration.serve.conftest import delete_prefix
from workers.gateway.app import create_app
from workers.gateway.auth import ApiKeys
from workers.gateway.model_client import ModelClient
from workers.gateway.services import Services
from workers.settings import WorkerSettings

ADMIN_KEY = "gw-test-admin"
JOB = {"prompt": "ab", "params": {"max_new_tokens": 4}}


@pytest.fixture
def settings(redis_url: str) -> Iterator[WorkerSettings]:
    settings = gateway_settings(
        redis_url,
        "gwtenants",
        api_keys=",".join(API_KEYS),
        admin_api_keys=ADMIN_KEY,
        tenant_rate_per_s=0.5,
        tenant_burst=2,
    )
    yield settings
    delete_prefix(redis_url, settings.prefix)


def tenants_in_stream(r: redis.Redis, keys: Keys) -> list[str | None]:
    return [json.loads(fields[b"job"]).get("tenant") for _, fields in r.xrange(keys.jobs)]


def test_a_key_is_its_tenant_and_its_rate_answers_429(
    settings: WorkerSettings, r: redis.Redis
) -> None:
    keys = ApiKeys(SecretStr(",".join(API_KEYS)), SecretStr(ADMIN_KEY))
    one, two = (keys.caller(key).owner for key in API_KEYS)
    with TestClient(create_app(Services.create(settings, cast(ModelClient, None)))) as http:
        as_one, as_admin = bearer(API_KEYS[0]), bearer(ADMIN_KEY)
        assert http.post("/v1/jobs", json=JOB, headers=as_one).status_code == 202
        refused = http.post("/v1/jobs", json={**JOB, "tenant": two}, headers=as_one)
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
        assert http.post("/v1/jobs", json={**JOB, "tenant": one}, headers=as_one).status_code == 202
        # The burst (2) is spent: the third job of the tenant waits for a token (2 s).
        limited = http.post("/v1/jobs", json=JOB, headers=as_one)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["type"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 2
        # Another tenant has a bucket of its own; an admin key may name any tenant.
        assert http.post("/v1/jobs", json=JOB, headers=bearer(API_KEYS[1])).status_code == 202
        assert (
            http.post("/v1/jobs", json={**JOB, "tenant": "acme"}, headers=as_admin).status_code
            == 202
        )
    assert tenants_in_stream(r, Keys(settings.prefix)) == [one, one, two, "acme"]


def test_the_producer_raises_with_the_wait_and_writes_nothing_over_the_rate(
    settings: WorkerSettings, r: redis.Redis
) -> None:
    producer = Producer.from_settings(settings)
    try:
        ids = producer.submit_many([{**JOB, "tenant": "t"} for _ in range(2)])
        with pytest.raises(RateLimitedError) as limited:
            producer.submit_many([{**JOB, "tenant": "t"}, {**JOB, "tenant": "u"}])
        # The other tenant's job went in; the refused one left no record.
        assert len(limited.value.submitted) == 1 and len(limited.value.failed) == 1
        assert 0 < limited.value.retry_after_s <= 2.0
        (refused,) = limited.value.failed
        assert not r.exists(Keys(settings.prefix).job(refused))
        # Without the check (a batch's lines), the workers hold such jobs back instead.
        ids += producer.submit_many([{**JOB, "tenant": "t"}], limit_rate=False)
    finally:
        producer.close()
    assert len(tenants_in_stream(r, Keys(settings.prefix))) == len(ids) + 1
