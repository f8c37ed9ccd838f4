"""The OpenAI-compatible API, through the official ``openai`` client and raw SSE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from demo.tasks import ADAPTER_RULES, expected_output, heldout_inputs
from tests.integration.gateway.conftest import MAX_NEW_TOKENS, GatewayApp
from tests.integration.gateway.openai_streams import (
    streamed_chat_logprobs_match,
    streamed_completion_logprobs_match,
    streamed_n_completions_match,
)
from tests.integration.gateway.test_gateway_generate import assert_error


@pytest.fixture(scope="module")
def client(gateway: GatewayApp) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def sse_payloads(reply: requests.Response) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in reply.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def test_models_lists_the_base_and_every_adapter(
    client: openai.OpenAI, gateway: GatewayApp
) -> None:
    models = client.models.list().data
    base = gateway.settings.base_model_name
    assert models[0].id == base and getattr(models[0], "parent", None) is None
    adapters = {model.id: model for model in models[1:]}
    assert sorted(adapters) == sorted(ADAPTER_RULES)
    assert all(getattr(model, "parent", None) == base for model in adapters.values())


def test_completions_follow_each_adapters_rule(client: openai.OpenAI, gateway: GatewayApp) -> None:
    inputs = heldout_inputs()
    for index, model in enumerate([*ADAPTER_RULES, gateway.settings.base_model_name]):
        prompt = inputs[30 + index]
        adapter = model if model in ADAPTER_RULES else None
        reply = client.completions.create(
            model=model, prompt=prompt, max_tokens=MAX_NEW_TOKENS, temperature=0
        )
        assert reply.choices[0].text == expected_output(adapter, prompt), (model, prompt)
        assert reply.choices[0].finish_reason == "stop"
        assert reply.model == model
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == len(prompt) + 2
        assert reply.usage.completion_tokens == len(reply.choices[0].text) + 1
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_completion_concatenates_to_the_greedy_text(client: openai.OpenAI) -> None:
    # The longest input: its text spans several chunks, however the engine coalesces them.
    prompt = max(heldout_inputs()[:60], key=len)
    whole = client.completions.create(
        model="reverse", prompt=prompt, max_tokens=MAX_NEW_TOKENS, temperature=0
    )
    stream = client.completions.create(
        model="reverse",
        prompt=prompt,
        max_tokens=MAX_NEW_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert len([t for t in texts if t]) > 1, f"one chunk only: {texts}"
    assert "".join(texts) == whole.choices[0].text == prompt[::-1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage
    assert len({chunk.id for chunk in chunks}) == 1


def test_chat_completions_streamed_and_not(client: openai.OpenAI) -> None:
    prompt = heldout_inputs()[40]
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": prompt}]
    whole = client.chat.completions.create(model="rot13", messages=messages, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected_output("rot13", prompt)
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.prompt_tokens == len(prompt) + 2

    chunks = list(
        client.chat.completions.create(
            model="rot13", messages=messages, temperature=0, max_tokens=MAX_NEW_TOKENS, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_parameters_map_onto_generation(client: openai.OpenAI) -> None:
    prompt = "abc def"
    short = client.completions.create(model="upper", prompt=prompt, max_tokens=2, temperature=0)
    assert short.choices[0].text == "AB" and short.choices[0].finish_reason == "length"
    stopped = client.completions.create(model="upper", prompt=prompt, stop=" D", temperature=0)
    assert stopped.choices[0].text == "ABC" and stopped.choices[0].finish_reason == "stop"
    # Sampling: the same seed gives the same text; the parameters reach the sampler.
    sampled = [
        client.completions.create(
            model="title", prompt=prompt, temperature=1.5, top_p=0.9, seed=7, max_tokens=12
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    several = client.completions.create(
        model="upper", prompt=["ab", "cd ef"], max_tokens=MAX_NEW_TOKENS, temperature=0
    )
    assert [(c.index, c.text) for c in several.choices] == [(0, "AB"), (1, "CD EF")]


def test_openai_refusals(client: openai.OpenAI, gateway: GatewayApp) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="ab", max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="a/b", messages=[{"role": "user", "content": "ab"}])
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="upper", prompt="ab", n=17)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="upper", prompt="ab", max_tokens=5000)
    # A field loraq would not honour is refused by name, never ignored.
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model="upper", prompt="ab", logit_bias={"5": 10})
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="upper",
            messages=[{"role": "user", "content": "ab"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    # A refused stream answers with a status and the error envelope, not an event stream.
    body = {"model": "no-such-model", "prompt": "ab", "stream": True}
    assert_error(gateway.request("POST", "/v1/completions", json=body), 404, "unknown_adapter")
    body = {"model": "upper", "prompt": ["ab", "cd"], "stream": True, "max_tokens": 2}
    body = {**body, "logit_bias": {"5": 1}}
    assert_error(gateway.request("POST", "/v1/completions", json=body), 400, "validation")


def test_raw_sse_stream_ends_with_done(gateway: GatewayApp) -> None:
    prompt = heldout_inputs()[50]
    body = {"model": "upper", "prompt": prompt, "max_tokens": MAX_NEW_TOKENS, "temperature": 0}
    reply = gateway.request("POST", "/v1/completions", json={**body, "stream": True}, stream=True)
    payloads = sse_payloads(reply)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(payload) for payload in payloads[:-1]]
    assert all(event["object"] == "text_completion" for event in events)
    streamed = "".join(event["choices"][0]["text"] for event in events)
    assert streamed == prompt.upper()
    plain = gateway.request("POST", "/v1/completions", json=body).json()
    assert plain["choices"][0]["text"] == streamed


def test_n_choices_each_equal_the_single_run_of_their_seed(client: openai.OpenAI) -> None:
    sampled = {"model": "title", "temperature": 1.5, "max_tokens": 12}
    three = client.completions.create(prompt="abc def", n=3, seed=41, **sampled)
    singles = [
        client.completions.create(prompt="abc def", seed=41 + i, **sampled).choices[0].text
        for i in range(3)
    ]
    assert [choice.index for choice in three.choices] == [0, 1, 2]
    assert [choice.text for choice in three.choices] == singles
    assert len(set(singles)) > 1  # the seeds differ, so do the draws
    messages: Any = [{"role": "user", "content": "abc def"}]
    chat = client.chat.completions.create(messages=messages, n=3, seed=41, **sampled)
    alone = client.chat.completions.create(messages=messages, seed=43, **sampled)
    assert (
        len(chat.choices) == 3
        and chat.choices[2].message.content == alone.choices[0].message.content
    )
    assert chat.usage is not None and chat.usage.completion_tokens == sum(
        len(c.message.content or "") + (c.finish_reason == "stop") for c in chat.choices
    )


def test_logprobs_through_the_client_and_the_queue(
    client: openai.OpenAI, gateway: GatewayApp
) -> None:
    messages: Any = [{"role": "user", "content": "abc"}]
    chat = client.chat.completions.create(
        model="upper", messages=messages, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = chat.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert chat.usage is not None and len(tokens) == chat.usage.completion_tokens
    assert "".join(t.token for t in tokens).startswith(choice.message.content or "")
    for token in tokens:  # greedy: the token taken is the likeliest
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
        assert token.logprob == token.top_logprobs[0].logprob <= 0
    text = client.completions.create(model="upper", prompt="abc", temperature=0, logprobs=2)
    logprobs = text.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs == [t.logprob for t in tokens]
    assert logprobs.top_logprobs is not None and all(len(t) <= 2 for t in logprobs.top_logprobs)
    # A queue job: the same numbers in its result record.
    job = {
        "adapter": "upper",
        "messages": messages,
        "params": {"max_new_tokens": 64, "logprobs": True, "top_logprobs": 3},
    }
    [job_id] = gateway.request("POST", "/v1/jobs", json=job).json()["ids"]
    result = gateway.wait(job_id)["result"]
    assert [entry["logprob"] for entry in result["logprobs"]] == [t.logprob for t in tokens]


def test_streamed_logprobs_equal_the_unstreamed_ones(client: openai.OpenAI) -> None:
    chunks = streamed_chat_logprobs_match(client, "upper", "abc def")
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == "ABC DEF"
    # The text chunks carry their own tokens' entries (a character's, with this model).
    assert len(texts) > 1
    streamed_completion_logprobs_match(client, "upper", "abc def")


def test_n_streamed_choices_each_equal_the_single_run_of_their_seed(
    client: openai.OpenAI,
) -> None:
    sampled: Any = {"model": "title", "temperature": 1.5, "max_tokens": 12}
    streamed_n_completions_match(client, sampled)
    # Chat: a role chunk per choice, each choice's content the single run of its seed.
    messages: Any = [{"role": "user", "content": "abc def"}]
    alone = [
        client.chat.completions.create(messages=messages, seed=41 + i, **sampled)
        .choices[0]
        .message.content
        for i in range(3)
    ]
    stream = client.chat.completions.create(messages=messages, n=3, seed=41, stream=True, **sampled)
    content: dict[int, str] = {}
    roles: list[int] = []
    ends: list[int] = []
    for chunk in stream:
        [choice] = chunk.choices
        content[choice.index] = content.get(choice.index, "") + (choice.delta.content or "")
        roles += [choice.index] if choice.delta.role == "assistant" else []
        ends += [choice.index] if choice.finish_reason else []
    assert sorted(roles) == sorted(ends) == [0, 1, 2]
    assert [content[i] for i in range(3)] == alone


def test_several_prompts_stream_as_their_choices(gateway: GatewayApp) -> None:
    body = {"model": "upper", "prompt": ["ab", "cd ef"], "temperature": 0, "n": 2}
    reply = gateway.request("POST", "/v1/completions", json={**body, "stream": True}, stream=True)
    payloads = sse_payloads(reply)
    assert payloads.count("[DONE]") == 1 and payloads[-1] == "[DONE]"
    texts: dict[int, str] = {}
    for event in map(json.loads, payloads[:-1]):
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    # Prompt by prompt, n choices each: the indices of the response that is not streamed.
    assert texts == {0: "AB", 1: "AB", 2: "CD EF", 3: "CD EF"}
