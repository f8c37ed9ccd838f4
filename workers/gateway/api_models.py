"""Request and response bodies of the native HTTP API (the OpenAI ones are apart)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas import JobStatus
from schemas.jobs import ONE_INPUT_SCHEMA, GenerationInput

MAX_JOBS_PER_REQUEST = 1000


class GenerateRequest(GenerationInput):
    """A synchronous generation: exactly one of ``prompt`` and ``messages``."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": ONE_INPUT_SCHEMA,
            # Adapters of the bundled demo kit.
            "examples": [
                {"adapter": "upper", "prompt": "big cat", "params": {"max_new_tokens": 16}},
                {"adapter": None, "messages": [{"role": "user", "content": "echo me"}]},
            ],
        },
    )


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
