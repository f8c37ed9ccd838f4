"""Structured output through the served app on the HF engine: the mixed batch of 64 rows
over 8 adapters (half constrained) through the queue, and through the official ``openai``
client with pydantic models (``client.chat.completions.parse``); the same checks run on
vLLM in tests/integration/vllm/test_vllm_openai.py."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from ray import serve

from tests.integration.engine.structured_kit import ADAPTERS
from tests.integration.gateway.conftest import GatewayApp, deploy
from tests.integration.gateway.structured_calls import (
    check_mixed_chat_rows,
    check_mixed_jobs,
    kit_settings,
)
from tests.integration.serve.conftest import delete_prefix


@pytest.fixture(scope="module")
def app(
    ray_serve: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayApp]:
    settings = kit_settings(redis_url, "gwjson", tmp_path_factory.mktemp("gw-structured"))
    app = deploy(settings, ray_serve)
    yield app
    serve.delete(settings.app_name)
    delete_prefix(redis_url, settings.prefix)


@pytest.mark.timeout(400)
def test_mixed_jobs_through_the_queue(app: GatewayApp) -> None:
    check_mixed_jobs(app)


@pytest.mark.timeout(400)
def test_mixed_rows_through_the_openai_client(app: GatewayApp) -> None:
    check_mixed_chat_rows(app)


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
