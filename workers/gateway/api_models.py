"""Request and response bodies of the native HTTP API (the OpenAI ones are apart)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas import GenerationParams, JobStatus, Message
from schemas.jobs import ADAPTER_FIELD_PATTERN, MAX_MESSAGES, MAX_PROMPT_CHARS

MAX_JOBS_PER_REQUEST = 1000


class GenerateRequest(BaseModel):
    """A synchronous generation: exactly one of ``prompt`` and ``messages``."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "oneOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
            ],
            # Adapters of the bundled demo kit.
            "examples": [
                {"adapter": "upper", "prompt": "hello world", "params": {"max_new_tokens": 16}},
                {"adapter": None, "messages": [{"role": "user", "content": "echo me"}]},
            ],
        },
    )

    adapter: Annotated[str, StringConstraints(pattern=ADAPTER_FIELD_PATTERN)] | None = Field(
        None, description='Registered adapter name; null or "" selects the base model.'
    )
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    messages: list[Message] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    params: GenerationParams = Field(default_factory=GenerationParams)

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' and 'messages' is required")
        return self


class JobsAccepted(BaseModel):
    """The ids of the jobs just queued, in request order."""

    ids: list[str]


class CancelReply(BaseModel):
    """A cancellation that took effect: a queued job will not run, a running one stops."""

    id: str
    cancelled: bool = True
    status: JobStatus = Field(description="The job's status just after the request.")


class AdapterInfo(BaseModel):
    """One registered adapter."""

    name: str
    rank: int | None = Field(None, description="LoRA rank r (None if its config is unreadable).")
    alpha: float | None = None
    target_modules: list[str] = Field(default_factory=list)
    loaded_on: list[str] = Field(
        default_factory=list, description="Model replicas that hold it on their device now."
    )


class AdapterList(BaseModel):
    """Every registered adapter and where each is loaded."""

    base_model: str
    replicas: list[str] = Field(description="The model replicas that answered.")
    adapters: list[AdapterInfo]


class Health(BaseModel):
    """Liveness: the gateway answers."""

    status: str = "ok"


class Check(BaseModel):
    """One dependency's state."""

    ok: bool
    detail: str | None = None


class Readiness(BaseModel):
    """Whether generation can be served (the model); Redis is reported apart, because the
    sync and OpenAI endpoints work without it."""

    ready: bool
    model: Check
    redis: Check
