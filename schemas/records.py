"""The job record (``{P}:job:{id}`` hash), its result and error, and job events."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from schemas import codec


class JobStatus(str, Enum):
    """Job statuses: ``queued -> running -> succeeded | failed | cancelled | expired``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """Whether no further change can follow (a final status is written once)."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)

# The job state machine, its one source: which status may follow which (``None``: no
# record yet). The queue's Lua scripts read it as ``schemas/lua/statuses.lua``, which
# ``python -m schemas.export`` writes from it; a test runs those scripts against it.
# A live status may move to any: ``queued`` again is a retry, ``running`` again a new
# attempt after a consumer died; a final status is written once.
_LIVE_NEXT = frozenset({JobStatus.QUEUED, JobStatus.RUNNING}) | FINAL_STATUSES
TRANSITIONS: dict[JobStatus | None, frozenset[JobStatus]] = {
    # Enqueued (a record with 'queued'), or pushed with plain XADD: its record is written
    # when a consumer takes it ('running'), or ends it (a payload that cannot be parsed).
    None: _LIVE_NEXT,
    JobStatus.QUEUED: _LIVE_NEXT,
    JobStatus.RUNNING: _LIVE_NEXT,
    **{status: frozenset() for status in FINAL_STATUSES},
}


def can_transition(current: JobStatus | None, new: JobStatus) -> bool:
    """Whether a record in ``current`` (``None``: no record yet) may move to ``new``."""
    return new in TRANSITIONS[current]


class ErrorType(str, Enum):
    """Why a job failed; the ``type`` of :class:`JobError`."""

    VALIDATION = "validation"
    UNKNOWN_ADAPTER = "unknown_adapter"
    INCOMPATIBLE_ADAPTER = "incompatible_adapter"
    # The adapter's store (S3, the Hub, …) did not answer; retried like a crash (v1.3).
    ADAPTER_UNAVAILABLE = "adapter_unavailable"
    TIMEOUT = "timeout"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    # No model replica could run the job (one died under it, none could start); retried
    # like a crash, final once the job's attempts or its deadline run out (v1.4).
    MODEL_UNAVAILABLE = "model_unavailable"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class JobError(BaseModel):
    """A failure, in words a client can act on."""

    type: ErrorType
    message: str


class Timings(BaseModel):
    """Where the time of a job went, in milliseconds."""

    queue_ms: float | None = None
    generation_ms: float | None = None
    total_ms: float | None = None


class TopLogprob(BaseModel):
    """One of the likeliest tokens at a step, and its log-probability."""

    token_id: int = Field(ge=0)
    token: str = Field(description="The token's text (a part of a character may be U+FFFD).")
    logprob: float


class TokenLogprob(TopLogprob):
    """A generated token's log-probability (under the model's own scores: before
    temperature, penalties and filters), and the likeliest tokens at its step."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class JobResult(BaseModel):
    """The output of a succeeded (or cancelled while running) job."""

    text: str
    finish_reason: Literal["stop", "length", "cancelled"]
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    adapter: str | None = None
    adapter_version: str | None = Field(
        None,
        description="Which version of the adapter answered (a digest of its files' "
        "store tags, or of a local folder's path and files); added in v1.3.",
    )
    replica: str | None = Field(None, description="The model replica that generated it.")
    timings: Timings = Field(default_factory=Timings)
    logprobs: list[TokenLogprob] | None = Field(
        None,
        description="One entry per generated token, when params.logprobs asked for them; "
        "added in v1.4.",
    )


class JobRecord(BaseModel):
    """One job's record as stored in the ``{P}:job:{id}`` hash."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: JobStatus
    adapter: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: JobResult | None = None
    error: JobError | None = None
    # The consumer that wrote the latest status (its name in the group); named 'worker'
    # on the wire since v1.0, kept so for compatibility.
    worker: str | None = None
    metadata: dict[str, JsonValue] | None = None

    @classmethod
    def from_hash(cls, job_id: str, fields: Mapping[Any, Any]) -> JobRecord:
        """Build a record from HGETALL output (bytes or text)."""
        raw = codec.decode_fields(fields)
        data: dict[str, Any] = {"id": job_id}
        for name, value in raw.items():
            if name in ("result", "error", "metadata"):
                data[name] = codec.loads(value) if value else None
            elif value != "":
                data[name] = value
        return cls.model_validate(data)

    def to_hash(self) -> dict[str, str]:
        """Fields for HSET: JSON for nested values, text for the rest, ``None`` left out."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json", exclude={"id"}).items():
            if value is None:
                continue
            out[name] = codec.dumps(value) if isinstance(value, dict) else str(value)
        return out


class JobEvent(BaseModel):
    """One entry of ``{P}:job:{id}:events``: a status change or a chunk of text."""

    event: Literal["status", "chunk"]
    status: JobStatus | None = None
    text: str | None = None
    ts: float | None = None
    attempt: int | None = Field(
        None,
        ge=1,
        description="On 'running': which start of the job this is. The chunks after the "
        "latest 'running' make up the text: a job run again streams from the start.",
    )

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> JobEvent:
        """Build an event from a stream entry's fields."""
        return cls.model_validate(codec.decode_fields(fields))

    @property
    def is_final(self) -> bool:
        """Whether this event carries a final status (the last entry of the stream)."""
        return self.event == "status" and self.status is not None and self.status.is_final
