"""OpenAI requests onto loraq's generation requests, and outputs back onto OpenAI bodies.

Pure: no Ray, no HTTP. The stream formats turn the engine's updates into the chunk
objects of a streamed completion or chat completion.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from schemas import GenerationParams, Message
from schemas.jobs import ADAPTER_NAME_PATTERN
from schemas.records import TokenLogprob, TopLogprob
from schemas.response_format import ResponseFormat
from schemas.validation import clip
from workers.engine.requests import GenerationOutput, GenerationRequest, TextDelta
from workers.gateway.errors import ApiError, validation_message
from workers.gateway.openai_fields import refuse_unhonoured
from workers.gateway.openai_models import (
    MAX_ROWS,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    ChatTopLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    FinishReason,
    SamplingFields,
    Usage,
)

# OpenAI's defaults where loraq's differ: sampling at temperature 1, 16 completion tokens.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_COMPLETION_TOKENS = 16
_ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)
_RESPONSE_FORMAT: TypeAdapter[ResponseFormat] = TypeAdapter(ResponseFormat)


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
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs and not body.logprobs:
        raise ApiError(400, "validation", "top_logprobs needs logprobs: true")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    top_logprobs = body.wanted_logprobs()
    return GenerationParams(
        max_new_tokens=max_tokens or default_max_tokens,
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        stop=stop,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        min_p=body.min_p,
        logprobs=top_logprobs is not None or None,
        top_logprobs=top_logprobs or None,
        response_format=response_format(body.response_format),
    )


def response_format(value: dict[str, JsonValue] | None) -> ResponseFormat | None:
    """The job's format of an OpenAI ``response_format``; 400 naming what is wrong."""
    if value is None:
        return None
    try:
        return _RESPONSE_FORMAT.validate_python(value)
    except ValidationError as exc:
        problem = validation_message(exc.errors())
        raise ApiError(400, "validation", f"response_format: {problem}") from None


def choice_params(params: GenerationParams, n: int) -> list[GenerationParams]:
    """The parameters of each of ``n`` choices: with a seed, choice ``i`` draws with
    ``seed + i`` (wrapping within the seed's range), so choice 0 is the single run."""
    if params.seed is None:
        return [params] * n
    return [params.model_copy(update={"seed": (params.seed + i) % 2**63}) for i in range(n)]


def _rows(body: SamplingFields, prompts: int) -> None:
    if prompts * body.n > MAX_ROWS:
        raise ApiError(
            400, "validation", f"{prompts} prompts times n={body.n} is over {MAX_ROWS} choices"
        )


def completion_requests(
    body: CompletionRequest, base_model: str, *, max_new_tokens: int
) -> list[GenerationRequest]:
    """One request per prompt of ``body`` and choice (``n``), prompt by prompt."""
    adapter = adapter_for(body.model, base_model)
    params = sampling_params(
        body,
        max_tokens=body.max_tokens,
        default_max_tokens=min(DEFAULT_COMPLETION_TOKENS, max_new_tokens),
    )
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    _rows(body, len(prompts))
    return [
        _request(adapter, choice, prompt=prompt)
        for prompt in prompts
        for choice in choice_params(params, body.n)
    ]


def chat_requests(
    body: ChatCompletionRequest, base_model: str, *, max_new_tokens: int
) -> list[GenerationRequest]:
    """The request of each choice of a chat completion (no length given: up to the
    server's cap)."""
    params = sampling_params(
        body,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        default_max_tokens=max_new_tokens,
    )
    _rows(body, 1)
    messages = chat_messages(body)
    adapter = adapter_for(body.model, base_model)
    return [
        _request(adapter, choice, messages=messages) for choice in choice_params(params, body.n)
    ]


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
    @property
    def logprobs(self) -> list[TokenLogprob] | None: ...


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


def completion_logprobs(
    entries: Sequence[TokenLogprob] | None, *, offset: int = 0
) -> CompletionLogprobs | None:
    """A completion choice's ``logprobs`` (OpenAI's legacy shape); ``offset``: the
    ``text_offset`` of the first entry."""
    if entries is None:
        return None
    offsets = itertools.accumulate((len(entry.token) for entry in entries), initial=offset)
    return CompletionLogprobs(
        tokens=[entry.token for entry in entries],
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[{top.token: top.logprob for top in entry.top_logprobs} for entry in entries],
        text_offset=list(offsets)[:-1],
    )


def chat_logprobs(entries: Sequence[TokenLogprob] | None) -> ChatLogprobs | None:
    """A chat choice's ``logprobs``."""
    if entries is None:
        return None

    def top(entry: TopLogprob) -> ChatTopLogprob:
        return ChatTopLogprob(
            token=entry.token, logprob=entry.logprob, bytes=list(entry.token.encode())
        )

    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                **top(entry).model_dump(), top_logprobs=[top(t) for t in entry.top_logprobs]
            )
            for entry in entries
        ]
    )


def completion(model: str, outputs: Sequence[Generated]) -> Completion:
    """The body of a finished completion, one choice per prompt and ``n``."""
    choices = [
        CompletionChoice(
            index=i,
            text=output.text,
            finish_reason=finish_reason(output),
            logprobs=completion_logprobs(output.logprobs),
        )
        for i, output in enumerate(outputs)
    ]
    return Completion(
        id=new_id("cmpl"),
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=usage(outputs),
    )


def chat_completion(model: str, outputs: Sequence[Generated]) -> ChatCompletion:
    """The body of a finished chat completion, one choice per ``n``."""
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=output.text),
            finish_reason=finish_reason(output),
            logprobs=chat_logprobs(output.logprobs),
        )
        for i, output in enumerate(outputs)
    ]
    return ChatCompletion(
        id=new_id("chatcmpl"),
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=usage(outputs),
    )


class StreamFormat(Protocol):
    """The chunks of one streamed response of one or more choices."""

    def opening(self, choices: int) -> list[BaseModel]:
        """Chunks sent before any text."""

    def text(self, index: int, delta: TextDelta) -> BaseModel:
        """The chunk carrying choice ``index``'s new text (and its tokens' logprobs)."""

    def closing(self, index: int, output: GenerationOutput) -> BaseModel:
        """The chunk that ends choice ``index``: its finish reason."""

    def usage(self, outputs: Sequence[GenerationOutput]) -> BaseModel:
        """The last chunk, with the usage summed over the choices."""


class _Sent:
    """Per choice of a stream: how many of its logprob entries have gone out."""

    def __init__(self) -> None:
        self.entries: dict[int, int] = {}

    def take(self, index: int, entries: Sequence[TokenLogprob]) -> int:
        """Count ``entries`` as sent; where they start among the choice's."""
        start = self.entries.get(index, 0)
        self.entries[index] = start + len(entries)
        return start

    def rest(self, index: int, output: GenerationOutput) -> list[TokenLogprob] | None:
        """The output's entries no chunk carried (``None``: none, or no logprobs)."""
        if output.logprobs is None:
            return None
        return output.logprobs[self.entries.get(index, 0) :] or None


class CompletionStream:
    """Chunks of a streamed completion: text chunks, then one with the finish reason,
    per choice. ``logprobs.text_offset`` counts from the start of the choice's text, as
    in the response that is not streamed."""

    def __init__(self, model: str) -> None:
        self.id = new_id("cmpl")
        self.model = model
        self.created = int(time.time())
        self._sent = _Sent()
        # Per choice: the text_offset of its next token.
        self._offsets: dict[int, int] = {}

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _logprobs(
        self, index: int, entries: Sequence[TokenLogprob] | None
    ) -> CompletionLogprobs | None:
        if entries is None:
            return None
        self._sent.take(index, entries)
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + sum(len(entry.token) for entry in entries)
        return completion_logprobs(entries, offset=offset)

    def opening(self, choices: int) -> list[BaseModel]:
        return []

    def text(self, index: int, delta: TextDelta) -> BaseModel:
        logprobs = self._logprobs(index, delta.logprobs)
        return self._chunk([CompletionChoice(index=index, text=delta.text, logprobs=logprobs)])

    def closing(self, index: int, output: GenerationOutput) -> BaseModel:
        choice = CompletionChoice(
            index=index,
            text="",
            finish_reason=finish_reason(output),
            logprobs=self._logprobs(index, self._sent.rest(index, output)),
        )
        return self._chunk([choice])

    def usage(self, outputs: Sequence[GenerationOutput]) -> BaseModel:
        return self._chunk([], usage(outputs))


class ChatStream:
    """Chunks of a streamed chat completion, per choice: the role, text deltas, the
    finish reason."""

    def __init__(self, model: str) -> None:
        self.id = new_id("chatcmpl")
        self.model = model
        self.created = int(time.time())
        self._sent = _Sent()

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> BaseModel:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _logprobs(self, index: int, entries: Sequence[TokenLogprob] | None) -> ChatLogprobs | None:
        if entries is not None:
            self._sent.take(index, entries)
        return chat_logprobs(entries)

    def opening(self, choices: int) -> list[BaseModel]:
        return [
            self._chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
            for i in range(choices)
        ]

    def text(self, index: int, delta: TextDelta) -> BaseModel:
        logprobs = self._logprobs(index, delta.logprobs)
        choice = ChatChunkChoice(
            index=index, delta=ChatDelta(content=delta.text), logprobs=logprobs
        )
        return self._chunk([choice])

    def closing(self, index: int, output: GenerationOutput) -> BaseModel:
        choice = ChatChunkChoice(
            index=index,
            delta=ChatDelta(),
            finish_reason=finish_reason(output),
            logprobs=self._logprobs(index, self._sent.rest(index, output)),
        )
        return self._chunk([choice])

    def usage(self, outputs: Sequence[GenerationOutput]) -> BaseModel:
        return self._chunk([], usage(outputs))
