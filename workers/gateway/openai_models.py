"""Bodies of the OpenAI-compatible API (the subset loraq serves).

Requests keep fields not declared here aside (``model_extra``): the routes refuse them
unless they are harmless to drop (:mod:`workers.gateway.openai_fields`). Declared fields
are validated with the same bounds as a job's parameters.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from schemas.jobs import (
    MAX_MESSAGES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
)
from schemas.jobs import StopString as StopText

MAX_PROMPTS = 16
MAX_CHOICES = 16  # n
MAX_ROWS = 64  # prompts times n: the rows one request may put in the batch
FinishReason = Literal["stop", "length"]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Stop = StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_STRINGS)] | None


class StreamOptions(BaseModel):
    """Options of a streamed response."""

    include_usage: bool = Field(False, description="Send a last chunk with the token usage.")


class SamplingFields(BaseModel):
    """What completions and chat completions share; mapped onto a job's parameters."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(
        min_length=1, description="An adapter name, or the base model's name (GET /v1/models)."
    )
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 1; 0 is greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Stop = Field(None, description="Up to 8 strings that end the text (not included).")
    n: int = Field(
        1,
        ge=1,
        le=MAX_CHOICES,
        description="Choices per prompt, each its own row; with a seed, choice i draws "
        "with seed + i (choice 0 is the single run of that seed).",
    )
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    # vLLM's extensions of OpenAI's sampling fields, with a job's bounds.
    top_k: int | None = Field(None, ge=0, le=1000, description="0 turns top-k off.")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Checked when mapped (openai_mapping.response_format): a bad one answers 400, as
    # OpenAI's API does, not the 422 of a malformed body.
    response_format: dict[str, JsonValue] | None = Field(
        None,
        description="text, json_object or json_schema (OpenAI's shapes), or loraq's regex "
        "and choice (docs/PROTOCOL.md): the text is held to it.",
    )

    def wanted_logprobs(self) -> int | None:
        """How many alternatives per token the request asks log-probabilities of
        (``None``: no log-probabilities)."""
        return None


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "upper", "prompt": "hello world", "temperature": 0}]
        }
    )

    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)]
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return each token's log-probability and this many likeliest tokens.",
    )

    def wanted_logprobs(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatMessage(BaseModel):
    """One message; ``developer`` is read as ``system``."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | list[TextPart]


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "reverse",
                    "messages": [{"role": "user", "content": "hello world"}],
                    "stream": True,
                }
            ]
        }
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Newer name of max_tokens (wins over it)."
    )
    logprobs: bool | None = Field(None, description="Return each token's log-probability.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="With logprobs: the likeliest tokens."
    )

    def wanted_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """The log-probabilities of a completion's tokens (``text_offset``: where each token
    starts in the text)."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    """One generated text (in a chunk: the new text; ``finish_reason`` set on the last)."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    """Response of ``POST /v1/completions`` (also the shape of its stream chunks)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatTopLogprob(BaseModel):
    """A token, its log-probability and its UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatTopLogprob):
    """A generated token and the likeliest tokens at its step."""

    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    """The log-probabilities of a message's tokens."""

    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class ChatChoice(BaseModel):
    """One generated message."""

    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    """Response of ``POST /v1/chat/completions``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """New content of a streamed message."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    """One choice of a stream chunk."""

    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """The base model or an adapter (``parent`` is the base model's name)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loraq"
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    """Response of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
