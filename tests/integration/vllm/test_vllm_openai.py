"""The OpenAI routes over the vLLM backend (``LORAQ_ENGINE=vllm``), through the official
``openai`` client: streamed log-probabilities and streamed ``n`` choices as on the HF
engine (tests/integration/gateway/test_gateway_openai.py)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from ray import serve

from tests.integration.gateway.conftest import GatewayApp, deploy, gateway_settings
from tests.integration.gateway.openai_streams import (
    streamed_chat_logprobs_match,
    streamed_completion_logprobs_match,
    streamed_n_completions_match,
)
from tests.integration.serve.conftest import delete_prefix

# The module's vLLM start takes minutes on two shared cores.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def client(ray_serve: str, redis_url: str) -> Iterator[openai.OpenAI]:
    settings = gateway_settings(
        redis_url,
        "gwvllm",
        engine="vllm",
        max_lora_rank=16,
        max_input_tokens=64,
        max_new_tokens=48,
        # As the HF engine runs the demo model: vLLM's "auto" casts float32 to bfloat16.
        dtype="float32",
        vllm_kv_cache_gb=1.0,
    )
    app: GatewayApp = deploy(settings, ray_serve)
    with openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c
    serve.delete(settings.app_name)
    delete_prefix(redis_url, settings.prefix)


def test_streamed_logprobs_equal_the_unstreamed_ones(client: openai.OpenAI) -> None:
    streamed_chat_logprobs_match(client)
    streamed_completion_logprobs_match(client)


def test_n_streamed_choices_each_equal_the_single_run_of_their_seed(
    client: openai.OpenAI,
) -> None:
    streamed_n_completions_match(client, {"model": "title", "temperature": 1.5, "max_tokens": 12})
