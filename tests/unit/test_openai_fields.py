"""Every request field of the official ``openai`` client is honoured, refused or dropped,
as docs/HTTP.md's table says: a field a newer client adds fails here until classified."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai.types.chat.completion_create_params as chat_params
import openai.types.completion_create_params as completion_params
import pytest
from pydantic import BaseModel

from workers.gateway.errors import ApiError
from workers.gateway.openai_fields import DROPPED
from workers.gateway.openai_mapping import chat_requests, completion_requests
from workers.gateway.openai_models import ChatCompletionRequest, CompletionRequest

BASE = "/models/base"
HTTP_MD = Path(__file__).resolve().parents[2] / "docs" / "HTTP.md"
ROW = re.compile(r"^\| `(\w+)` \| (honoured|refused|dropped|—) \| (honoured|refused|dropped|—) \|$")
CHAT_BODY: dict[str, Any] = {"model": "upper", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION_BODY: dict[str, Any] = {"model": "upper", "prompt": "hi"}


def documented() -> dict[str, tuple[str, str]]:
    """Field -> (its class on chat, on completions) from docs/HTTP.md's table."""
    text = HTTP_MD.read_text()
    table = text.split("<!-- openai-fields: the test reads this table -->", 1)[1]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        match = ROW.match(line)
        assert match, f"a row of the field table does not parse: {line!r}"
        rows[match[1]] = (match[2], match[3])
    return rows


def run(body: dict[str, Any], model: type[BaseModel]) -> None:
    if model is ChatCompletionRequest:
        chat_requests(ChatCompletionRequest.model_validate(body), BASE, max_new_tokens=64)
    else:
        completion_requests(CompletionRequest.model_validate(body), BASE, max_new_tokens=64)


def refusal(body: dict[str, Any], model: type[BaseModel]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        run(body, model)
    assert caught.value.status == 400 and caught.value.type == "validation"
    return caught.value


@pytest.mark.parametrize(
    ("client_fields", "model", "base", "column"),
    [
        (chat_params.CompletionCreateParamsStreaming, ChatCompletionRequest, CHAT_BODY, 0),
        (completion_params.CompletionCreateParamsStreaming, CompletionRequest, COMPLETION_BODY, 1),
    ],
    ids=["chat", "completions"],
)
def test_every_client_field_is_honoured_refused_or_dropped(
    client_fields: type, model: type[BaseModel], base: dict[str, Any], column: int
) -> None:
    table = documented()
    for name in sorted(client_fields.__annotations__):
        assert name in table, f"{name} is in the openai client but not in docs/HTTP.md's table"
        kind = table[name][column]
        if kind == "honoured":
            # response_format: issue 23's structured output (declared by its own change).
            assert name in model.model_fields, f"{name} is documented honoured, not declared"
        elif kind == "dropped":
            assert name in DROPPED and name not in model.model_fields, name
            run({**base, name: "x"}, model)
        else:
            assert kind == "refused", f"{name} is in the client, documented as —"
            assert name not in model.model_fields and name not in DROPPED, name
            assert name in refusal({**base, name: {"x": 1}}, model).message
    # The table names no field the endpoint's client does not have.
    sent = {name for name, kinds in table.items() if kinds[column] != "—"}
    extensions = {"top_k", "min_p", "repetition_penalty"}  # vLLM's, honoured
    assert sent - extensions <= set(client_fields.__annotations__)
    assert all(
        table[name][column] == "honoured" and name in model.model_fields for name in extensions
    )


def test_unknown_fields_and_message_fields_are_refused_null_is_absent() -> None:
    error = refusal({**COMPLETION_BODY, "temprature": 0, "echo": True}, CompletionRequest)
    assert "temprature" in error.message and "echo" in error.message
    message = {"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}
    body = {**CHAT_BODY, "messages": [message]}
    assert "messages[0].tool_calls" in refusal(body, ChatCompletionRequest).message
    # A null field is an absent one (clients send defaults as null); a name is dropped.
    named = {"role": "user", "content": "hi", "name": "ann"}
    run(
        {**CHAT_BODY, "messages": [named], "tools": None, "logit_bias": None}, ChatCompletionRequest
    )
