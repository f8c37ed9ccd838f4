"""OpenAI requests onto loraq's generation requests, and outputs back onto OpenAI bodies.

Pure: no Ray, no HTTP. The stream formats turn the engine's updates into the chunk
objects of a streamed completion or chat completion.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from schemas import GenerationParams, Message
from schemas.jobs import ADAPTER_NAME_PATTERN
from schemas.validation import clip
from workers.engine.requests import GenerationOutput, GenerationRequest
from workers.gateway.errors import ApiError
from workers.gateway.openai_fields import refuse_unhonoured
from workers.gateway.openai_models import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    FinishReason,
    SamplingFields,
    Usage,
)

# OpenAI's defaults where loraq's differ: sampling at temperature 1, 16 completion tokens.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_COMPLETION_TOKENS = 16
_ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)


def adapter_for(model: str, base_model: str) -> str | None:
    """The adapter that ``model`` names (``None``: the base model); 404 when it cannot be one."""
    if model == base_model:
        return None
    if not _ADAPTER_NAME.fullmatch(model):
        raise ApiError(404, "unknown_adapter", f"model {clip(model)} does not exist")
    return model


def sampling_params(
    body: SamplingFields, *, max_tokens: int | None, default_max_tokens: int
) -> GenerationParams:
    """The job parameters that ``body``'s OpenAI fields ask for; 400 for a field that
    loraq would not honour."""
    refuse_unhonoured(body)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return GenerationParams(
        max_new_tokens=max_tokens or default_max_tokens,
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
    )


def completion_requests(
    body: CompletionRequest, base_model: str, *, max_new_tokens: int
) -> list[GenerationRequest]:
    """One request per prompt of ``body``."""
    adapter = adapter_for(body.model, base_model)
    params = sampling_params(
        body,
        max_tokens=body.max_tokens,
        default_max_tokens=min(DEFAULT_COMPLETION_TOKENS, max_new_tokens),
    )
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    return [_request(adapter, params, prompt=prompt) for prompt in prompts]


def chat_request(
    body: ChatCompletionRequest, base_model: str, *, max_new_tokens: int
) -> GenerationRequest:
    """The request of a chat completion (no length given: up to the server's cap)."""
    params = sampling_params(
        body,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        default_max_tokens=max_new_tokens,
    )
    messages = chat_messages(body)
    return _request(adapter_for(body.model, base_model), params, messages=messages)


def chat_messages(body: ChatCompletionRequest) -> list[Message]:
    """The job messages of a chat completion (text parts joined, developer as system)."""
    return [_message(m) for m in body.messages]


def _request(
    adapter: str | None,
    params: GenerationParams,
    *,
    prompt: str | None = None,
    messages: list[Message] | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        adapter=adapter,
        prompt=prompt,
        messages=messages,
        params=params,
        request_id=f"http-{uuid.uuid4().hex}",
    )


def _message(message: ChatMessage) -> Message:
    content = message.content
    if not isinstance(content, str):
        content = "".join(part.text for part in content)
    role = "system" if message.role == "developer" else message.role
    return Message(role=role, content=content)


class Generated(Protocol):
    """What a response body is built from: an engine output or a job's stored result."""

    @property
    def text(self) -> str: ...
    @property
    def finish_reason(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


def finish_reason(output: Generated) -> FinishReason:
    """OpenAI's finish reason (a row cancelled under us ended early: ``stop``)."""
    return "length" if output.finish_reason == "length" else "stop"


def usage(outputs: Sequence[Generated]) -> Usage:
    """Token counts summed over ``outputs``."""
    prompt = sum(output.prompt_tokens for output in outputs)
    completion = sum(output.completion_tokens for output in outputs)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def new_id(kind: str) -> str:
    """A response id such as ``cmpl-…`` or ``chatcmpl-…``."""
    return f"{kind}-{uuid.uuid4().hex}"


def completion(model: str, outputs: Sequence[Generated]) -> Completion:
    """The body of a finished completion, one choice per prompt."""
    choices = [
        CompletionChoice(index=i, text=output.text, finish_reason=finish_reason(output))
        for i, output in enumerate(outputs)
    ]
    return Completion(
        id=new_id("cmpl"),
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=usage(outputs),
    )


def chat_completion(model: str, output: Generated) -> ChatCompletion:
    """The body of a finished chat completion."""
    choice = ChatChoice(
        index=0,
        message=AssistantMessage(content=output.text),
        finish_reason=finish_reason(output),
    )
    return ChatCompletion(
        id=new_id("chatcmpl"),
        created=int(time.time()),
        model=model,
        choices=[choice],
        usage=usage([output]),
    )


class StreamFormat(Protocol):
    """The chunks of one streamed response."""

    def opening(self) -> list[BaseModel]:
        """Chunks sent before any text."""

    def text(self, text: str) -> BaseModel:
        """The chunk carrying new text."""

    def closing(self, output: GenerationOutput, *, include_usage: bool) -> list[BaseModel]:
        """The chunks that end the stream."""


class CompletionStream:
    """Chunks of a streamed completion: text chunks, then one with the finish reason."""

    def __init__(self, model: str) -> None:
        self.id = new_id("cmpl")
        self.model = model
        self.created = int(time.time())

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def opening(self) -> list[BaseModel]:
        return []

    def text(self, text: str) -> BaseModel:
        return self._chunk([CompletionChoice(index=0, text=text)])

    def closing(self, output: GenerationOutput, *, include_usage: bool) -> list[BaseModel]:
        last = self._chunk(
            [CompletionChoice(index=0, text="", finish_reason=finish_reason(output))]
        )
        return [last, self._chunk([], usage([output]))] if include_usage else [last]


class ChatStream:
    """Chunks of a streamed chat completion: the role, text deltas, the finish reason."""

    def __init__(self, model: str) -> None:
        self.id = new_id("chatcmpl")
        self.model = model
        self.created = int(time.time())

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> BaseModel:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def opening(self) -> list[BaseModel]:
        return [
            self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))])
        ]

    def text(self, text: str) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(content=text))])

    def closing(self, output: GenerationOutput, *, include_usage: bool) -> list[BaseModel]:
        reason = finish_reason(output)
        last = self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(), finish_reason=reason)])
        return [last, self._chunk([], usage([output]))] if include_usage else [last]
