"""The OpenAI routes over the vLLM backend (``LORAQ_ENGINE=vllm``), through the official
``openai`` client: streamed log-probabilities and streamed ``n`` choices as on the HF
engine (tests/integration/gateway/test_gateway_openai.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from ray import serve

from tests.integration.gateway.conftest import GatewayApp, deploy, gateway_settings
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
    messages: Any = [{"role": "user", "content": "abc def"}]
    asked: Any = {"model": "upper", "temperature": 0, "logprobs": True, "top_logprobs": 3}
    whole = client.chat.completions.create(messages=messages, **asked)
    expected = whole.choices[0].logprobs
    assert expected is not None and expected.content
    assert whole.choices[0].message.content == "ABC DEF"
    chunks = list(client.chat.completions.create(messages=messages, stream=True, **asked))
    streamed = [
        token
        for chunk in chunks
        for choice in chunk.choices
        if choice.logprobs is not None
        for token in choice.logprobs.content or []
    ]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in expected.content]
    for chunk in chunks:
        choice = chunk.choices[0]
        if choice.delta.content:
            assert choice.logprobs is not None and choice.logprobs.content
            assert "".join(t.token for t in choice.logprobs.content) == choice.delta.content
    prompt = {"model": "upper", "prompt": "abc def", "temperature": 0, "logprobs": 2}
    plain = client.completions.create(**prompt).choices[0].logprobs
    assert plain is not None and plain.tokens
    parts = [
        c.choices[0].logprobs
        for c in client.completions.create(stream=True, **prompt)
        if c.choices and c.choices[0].logprobs
    ]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for part in parts for v in getattr(part, key) or []] == getattr(plain, key)


def test_n_streamed_choices_each_equal_the_single_run_of_their_seed(
    client: openai.OpenAI,
) -> None:
    sampled: Any = {"model": "title", "temperature": 1.5, "max_tokens": 12}
    replies = [
        client.completions.create(prompt="abc def", seed=41 + i, **sampled) for i in range(3)
    ]
    chunks = list(
        client.completions.create(
            prompt="abc def",
            n=3,
            seed=41,
            stream=True,
            stream_options={"include_usage": True},
            **sampled,
        )
    )
    texts: dict[int, str] = {}
    ends: list[int] = []
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
        ends += [choice.index] if choice.finish_reason else []
    assert [texts[i] for i in range(3)] == [r.choices[0].text for r in replies]
    assert sorted(ends) == [0, 1, 2]
    assert len(set(texts.values())) > 1
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == sum(r.usage.completion_tokens for r in replies if r.usage)
