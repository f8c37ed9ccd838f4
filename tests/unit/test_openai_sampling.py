"""The OpenAI sampling surface onto job parameters and back: n, penalties, log-probabilities."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.records import TokenLogprob, TopLogprob
from workers.engine.requests import GenerationOutput
from workers.gateway.errors import ApiError
from workers.gateway.openai_mapping import (
    chat_completion,
    chat_requests,
    completion,
    completion_requests,
)
from workers.gateway.openai_models import ChatCompletionRequest, CompletionRequest

BASE = "/models/base"
CHAT: dict[str, Any] = {"model": "upper", "messages": [{"role": "user", "content": "hi"}]}


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({**CHAT, **fields})


def test_n_choices_are_rows_with_seeds_derived_per_choice() -> None:
    body = CompletionRequest(model="upper", prompt=["ab", "cd"], n=3, seed=2**63 - 2)
    requests = completion_requests(body, BASE, max_new_tokens=64)
    assert [r.prompt for r in requests] == ["ab"] * 3 + ["cd"] * 3
    assert [r.params.seed for r in requests] == [2**63 - 2, 2**63 - 1, 0] * 2
    assert len({r.request_id for r in requests}) == 6
    unseeded = chat_requests(chat(n=2), BASE, max_new_tokens=64)
    assert [r.params.seed for r in unseeded] == [None, None]


def test_sampling_fields_reach_the_job_parameters() -> None:
    fields = {
        "presence_penalty": 0.5,
        "frequency_penalty": -1.0,
        "top_k": 7,
        "min_p": 0.2,
        "repetition_penalty": 1.3,
        "logprobs": True,
        "top_logprobs": 4,
    }
    [request] = chat_requests(chat(**fields), BASE, max_new_tokens=64)
    assert request.params.model_dump(include=set(fields)) == fields
    [plain] = chat_requests(chat(), BASE, max_new_tokens=64)
    # Unset fields stay unset in the job (a worker older than v1.4 still takes it).
    assert plain.params.model_dump(exclude_none=True).keys().isdisjoint(fields.keys() - {"top_k"})
    completion_body = CompletionRequest(model="upper", prompt="ab", logprobs=0)
    [request] = completion_requests(completion_body, BASE, max_new_tokens=64)
    assert (request.params.logprobs, request.params.top_logprobs) == (True, None)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
        ({"n": 16, "messages": CHAT["messages"]}, None),
        ({"n": 16, "stream": True, "logprobs": True, "top_logprobs": 2}, None),
    ],
)
def test_refused_combinations(fields: dict[str, Any], words: str | None) -> None:
    if words is None:  # the largest n is fine, streamed or not, with logprobs or not
        requests = chat_requests(chat(**fields), BASE, max_new_tokens=64)
        assert len(requests) == 16
        assert {r.params.top_logprobs for r in requests} == {fields.get("top_logprobs")}
        return
    with pytest.raises(ApiError, match=words) as caught:
        chat_requests(chat(**fields), BASE, max_new_tokens=64)
    assert caught.value.status == 400
    with pytest.raises(ApiError, match="over 64 choices"):
        body = CompletionRequest(model="upper", prompt=["a"] * 5, n=13)
        completion_requests(body, BASE, max_new_tokens=64)


def test_logprobs_in_openai_shapes() -> None:
    entries = [
        TokenLogprob(
            token_id=5,
            token="é",
            logprob=-0.25,
            top_logprobs=[TopLogprob(token_id=5, token="é", logprob=-0.25)],
        ),
        TokenLogprob(token_id=9, token="ab", logprob=-2.0, top_logprobs=[]),
    ]
    out = GenerationOutput(
        text="éab",
        finish_reason="length",
        prompt_tokens=3,
        completion_tokens=2,
        adapter=None,
        logprobs=entries,
    )
    plain = GenerationOutput(
        text="x", finish_reason="stop", prompt_tokens=3, completion_tokens=1, adapter=None
    )
    text = completion("m", [out, plain])
    first = text.choices[0].logprobs
    assert first is not None and text.choices[1].logprobs is None
    assert first.tokens == ["é", "ab"] and first.token_logprobs == [-0.25, -2.0]
    assert first.top_logprobs == [{"é": -0.25}, {}] and first.text_offset == [0, 1]
    reply = chat_completion("m", [out, plain])
    assert [c.index for c in reply.choices] == [0, 1] and reply.usage.completion_tokens == 3
    content = reply.choices[0].logprobs
    assert content is not None and content.content is not None
    assert content.content[0].bytes == [0xC3, 0xA9]
    assert content.content[0].top_logprobs[0].logprob == -0.25
