"""The gateway's pure parts: API keys, OpenAI mapping, SSE framing, the body size limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from schemas.records import TokenLogprob, TopLogprob
from workers.engine.requests import GenerationOutput, TextDelta
from workers.gateway.auth import ApiKeys
from workers.gateway.errors import ApiError, validation_message
from workers.gateway.limits import BodySizeLimit
from workers.gateway.openai_mapping import (
    ChatStream,
    CompletionStream,
    adapter_for,
    chat_completion,
    chat_requests,
    completion,
    completion_requests,
    finish_reason,
)
from workers.gateway.openai_models import ChatCompletionRequest, CompletionRequest
from workers.gateway.sse import DONE, sse_events

BASE = "/models/base"


def output(text: str = "AB", reason: str = "stop") -> GenerationOutput:
    return GenerationOutput(
        text=text, finish_reason=reason, prompt_tokens=4, completion_tokens=3, adapter="upper"
    )  # type: ignore[arg-type]


def test_api_keys_accept_exactly_the_configured_keys() -> None:
    keys = ApiKeys(SecretStr(" one , two,,"))
    assert keys.enabled
    assert keys.accepts("one") and keys.accepts("two")
    for wrong in ("", "on", "one ", "onex", "one,two", "three", "ONE"):
        assert not keys.accepts(wrong), wrong
    assert "one" not in repr(keys) and "two" not in str(keys)
    for off in (None, SecretStr(""), SecretStr(" , ")):
        assert not ApiKeys(off).enabled


def test_a_key_submits_as_its_own_tenant_and_only_an_admin_names_another() -> None:
    keys = ApiKeys(SecretStr("one,two"), admin=SecretStr("root"))
    one, two, root = keys.caller("one"), keys.caller("two"), keys.caller("root")
    assert one.owner is not None and one.tenant_for(None) == one.owner
    assert one.tenant_for(one.owner) == one.owner
    for claimed in (two.owner, "acme"):
        with pytest.raises(ApiError) as refused:
            one.tenant_for(claimed)
        assert refused.value.status == 403
    assert root.tenant_for("acme") == "acme" and root.tenant_for(None) == root.owner
    anyone = ApiKeys(None).caller(None)
    assert anyone.tenant_for("acme") == "acme" and anyone.tenant_for(None) is None


def test_model_names_pick_the_adapter_or_the_base() -> None:
    assert adapter_for(BASE, BASE) is None
    assert adapter_for("upper", BASE) == "upper"
    for bad in ("a/b", "..", "", "-x"):
        with pytest.raises(ApiError) as caught:
            adapter_for(bad, BASE)
        assert caught.value.status == 404 and caught.value.type == "unknown_adapter"


def test_completion_fields_map_onto_generation_params() -> None:
    body = CompletionRequest(model="upper", prompt=["ab", "cd"], stop="X", seed=3, top_p=0.5)
    requests = completion_requests(body, BASE, max_new_tokens=512)
    assert [r.prompt for r in requests] == ["ab", "cd"]
    assert len({r.request_id for r in requests}) == 2
    params = requests[0].params
    assert (params.max_new_tokens, params.temperature, params.top_p) == (16, 1.0, 0.5)
    assert (params.seed, params.stop, requests[0].adapter) == (3, ["X"], "upper")
    greedy = CompletionRequest(model=BASE, prompt="ab", temperature=0, max_tokens=40)
    [request] = completion_requests(greedy, BASE, max_new_tokens=8)
    assert request.adapter is None and request.params.temperature == 0.0
    assert request.params.max_new_tokens == 40  # over the cap: the engine refuses it


def test_chat_messages_and_lengths() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "reverse",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}],
                },
            ],
            "max_tokens": 9,
            "max_completion_tokens": 5,
            "stop": ["a", "b"],
        }
    )
    [request] = chat_requests(body, BASE, max_new_tokens=64)
    assert request.messages is not None
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "be brief"),
        ("user", "hello"),
    ]
    assert request.params.max_new_tokens == 5 and request.params.stop == ["a", "b"]
    plain = ChatCompletionRequest(model="x", messages=[{"role": "user", "content": "hi"}])  # type: ignore[list-item]
    assert chat_requests(plain, BASE, max_new_tokens=64)[0].params.max_new_tokens == 64


def test_finish_reasons_and_usage() -> None:
    assert finish_reason(output(reason="length")) == "length"
    assert finish_reason(output(reason="cancelled")) == "stop"
    body = completion("upper", [output("AB"), output("CD", "length")])
    assert [(c.index, c.text, c.finish_reason) for c in body.choices] == [
        (0, "AB", "stop"),
        (1, "CD", "length"),
    ]
    assert body.usage is not None
    assert (body.usage.prompt_tokens, body.usage.completion_tokens, body.usage.total_tokens) == (
        8,
        6,
        14,
    )


async def _updates(*items: TextDelta | GenerationOutput | ApiError) -> AsyncGenerator[Any, None]:
    for item in items:
        if isinstance(item, ApiError):
            raise item
        yield item


def _events(raw: list[bytes]) -> list[Any]:
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in raw)
    return [chunk[6:-2].decode() if chunk == DONE else json.loads(chunk[6:-2]) for chunk in raw]


async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


def test_chat_stream_events_role_text_finish_usage_done() -> None:
    form = ChatStream("upper")
    updates = _updates(TextDelta("A"), TextDelta("B"), output())
    events = _events(asyncio.run(_collect(sse_events(form, [updates], include_usage=True))))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"]["content"] for e in events[1:3]] == ["A", "B"]
    assert events[3]["choices"][0]["finish_reason"] == "stop"
    assert events[4]["choices"] == [] and events[4]["usage"]["total_tokens"] == 7
    assert events[5] == "[DONE]"
    assert len({e["id"] for e in events[:-1]}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_a_failure_mid_stream_is_an_error_event_then_done() -> None:
    form = CompletionStream("upper")
    updates = _updates(TextDelta("A"), ApiError(500, "internal", "boom"))
    events = _events(asyncio.run(_collect(sse_events(form, [updates], include_usage=False))))
    assert events[0]["choices"][0]["text"] == "A"
    assert events[1] == {"error": {"type": "internal", "message": "boom"}}
    assert events[2] == "[DONE]"


def entry(token: str, logprob: float) -> TokenLogprob:
    top = [TopLogprob(token_id=1, token=token, logprob=logprob)]
    return TokenLogprob(token_id=1, token=token, logprob=logprob, top_logprobs=top)


def test_streamed_logprobs_add_up_to_the_outputs_and_the_rest_ends_the_choice() -> None:
    # "é" and "bc" came with text; the end-of-text token came with none.
    entries = [entry("é", -0.5), entry("bc", -1.0), entry("</s>", -0.25)]
    done = GenerationOutput(
        text="ébc",
        finish_reason="stop",
        prompt_tokens=2,
        completion_tokens=3,
        adapter=None,
        logprobs=entries,
    )
    deltas = [TextDelta("é", entries[:1]), TextDelta("bc", entries[1:2])]
    form = CompletionStream("upper")
    raw = sse_events(form, [_updates(*deltas, done)], include_usage=False)
    events = _events(asyncio.run(_collect(raw)))
    streamed = [e["choices"][0]["logprobs"] for e in events[:-1]]
    whole = completion("upper", [done]).choices[0].logprobs
    assert whole is not None
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for part in streamed for v in part[key]] == getattr(whole, key), key
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"][0]["logprobs"]["tokens"] == ["</s>"]
    chat = ChatStream("upper")
    raw = sse_events(chat, [_updates(*deltas, done)], include_usage=False)
    events = _events(asyncio.run(_collect(raw)))[1:-1]  # after the role, before [DONE]
    content = [t for e in events for t in e["choices"][0]["logprobs"]["content"]]
    reply = chat_completion("upper", [done]).choices[0].logprobs
    assert reply is not None and reply.content is not None
    assert content == [t.model_dump(mode="json") for t in reply.content]
    assert content[0]["bytes"] == [0xC3, 0xA9]


async def _slow(index: int, *items: TextDelta | GenerationOutput) -> AsyncGenerator[Any, None]:
    for item in items:
        await asyncio.sleep(0.005 * (3 - index))
        yield item


def test_choices_stream_merged_each_with_its_index_and_end() -> None:
    streams = [
        _slow(i, TextDelta(f"{i}a"), TextDelta(f"{i}b"), output(f"{i}a{i}b")) for i in range(3)
    ]
    form = ChatStream("upper")
    events = _events(asyncio.run(_collect(sse_events(form, streams, include_usage=True))))
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 9
    chunks = [e["choices"][0] for e in events[:-2]]
    assert all(len(e["choices"]) == 1 for e in events[:-2])
    for i in range(3):
        mine = [c for c in chunks if c["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"]["content"] or "" for c in mine) == f"{i}a{i}b"
        assert [c["finish_reason"] for c in mine] == [None, None, None, "stop"]
    # Interleaved as they came: the quickest choice (2) ended first.
    assert [c["index"] for c in chunks if c["finish_reason"]] == [2, 1, 0]


def test_a_failing_choice_ends_the_merged_stream_and_stops_the_others() -> None:
    stopped: list[int] = []

    async def endless(index: int) -> AsyncGenerator[Any, None]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield TextDelta(str(index))
        finally:
            stopped.append(index)

    streams = [endless(0), _updates(TextDelta("x"), ApiError(500, "internal", "boom")), endless(2)]
    form = CompletionStream("upper")
    events = _events(asyncio.run(_collect(sse_events(form, streams, include_usage=True))))
    assert events[-2] == {"error": {"type": "internal", "message": "boom"}}
    assert events[-1] == "[DONE]"
    assert sorted(stopped) == [0, 2]


def test_validation_message_lists_the_first_problems() -> None:
    problems = [{"loc": ("body", "params", f"f{i}"), "msg": "Value error, bad"} for i in range(7)]
    message = validation_message(problems)
    assert message.startswith("params.f0: bad; params.f1: bad")
    assert message.endswith("and 2 more")


async def _echo_length(scope: Any, receive: Any, send: Any) -> None:
    """A minimal ASGI app: answers 200 with the length of the body it read."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def _call(limit: int, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(
        BodySizeLimit(_echo_length, max_body_bytes=limit, body_timeout_s=5.0)(scope, receive, send)
    )
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def test_body_limit_declared_streamed_and_within() -> None:
    assert _call(10, [b"12345", b"67890"], []) == (200, b"10")
    status, body = _call(10, [b"12345", b"678901"], [])
    assert status == 413 and json.loads(body)["error"]["type"] == "payload_too_large"
    assert _call(10, [b"x"], [(b"content-length", b"11")])[0] == 413
    assert _call(10, [b"x"], [(b"content-length", b"1")]) == (200, b"1")
    assert _call(10, [b"x"], [(b"content-length", b"-1")])[0] == 400
