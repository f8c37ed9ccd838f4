"""The served app over the vLLM backend (``LORAQ_ENGINE=vllm``), through the official
``openai`` client and the queue, on the structured kit's model and adapters
(tests/integration/engine/structured_kit.py): the mixed structured batch, streamed
log-probabilities and streamed ``n`` choices, as on the HF engine
(tests/integration/gateway/test_gateway_structured.py, test_gateway_openai.py). One app for
all of them: a vLLM start costs minutes of CPU."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from ray import serve

from tests.integration.gateway.conftest import GatewayApp, deploy
from tests.integration.gateway.openai_streams import (
    streamed_chat_logprobs_match,
    streamed_completion_logprobs_match,
    streamed_n_completions_match,
)
from tests.integration.gateway.structured_calls import (
    check_mixed_chat_rows,
    check_mixed_jobs,
    kit_settings,
)
from tests.integration.serve.conftest import delete_prefix

# The module's vLLM start takes minutes on two shared cores.
pytestmark = pytest.mark.timeout(900)

# The kit's weights are random: most greedy answers hold special tokens (the text leaves
# them out, the log-probability entries name them). This one's 15 characters hold none.
CHAT_MODEL, CHAT_CONTENT = "s6", "row 1: answer"


@pytest.fixture(scope="module")
def app(
    ray_serve: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayApp]:
    settings = kit_settings(
        redis_url,
        "gwvllm",
        tmp_path_factory.mktemp("vllm-app"),
        engine="vllm",
        max_lora_rank=16,
        # As the HF engine runs the kit: vLLM's "auto" casts float32 to bfloat16.
        dtype="float32",
        vllm_kv_cache_gb=1.0,
    )
    app = deploy(settings, ray_serve)
    yield app
    serve.delete(settings.app_name)
    delete_prefix(redis_url, settings.prefix)


@pytest.fixture(scope="module")
def client(app: GatewayApp) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_mixed_jobs_through_the_queue(app: GatewayApp) -> None:
    check_mixed_jobs(app)


def test_mixed_rows_through_the_openai_client(app: GatewayApp) -> None:
    check_mixed_chat_rows(app)


def test_streamed_logprobs_equal_the_unstreamed_ones(client: openai.OpenAI) -> None:
    streamed_chat_logprobs_match(client, CHAT_MODEL, CHAT_CONTENT)
    streamed_completion_logprobs_match(client, CHAT_MODEL, CHAT_CONTENT)


def test_n_streamed_choices_each_equal_the_single_run_of_their_seed(
    client: openai.OpenAI,
) -> None:
    streamed_n_completions_match(client, {"model": "s0", "temperature": 1.5, "max_tokens": 12})
