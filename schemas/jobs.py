"""The job a producer submits: wire protocol v1, field ``job`` of a ``{P}:jobs`` entry."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)
from typing_extensions import Self

from schemas.response_format import ResponseFormat

JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# A leading letter or digit rules out "." and ".."; no separators rules out paths.
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# On the wire "" also means the base model.
ADAPTER_FIELD_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"

MAX_PROMPT_CHARS = 200_000
# The `job` field of an entry, as UTF-8 JSON: checked before anything parses it, so that
# a hostile entry (megabytes of `[],[],…`) costs no consumer seconds of parsing. The same
# as the gateway's default body bound; a 200,000-character prompt fits even escaped.
MAX_JOB_BYTES = 4 * 1024 * 1024
MAX_MESSAGES = 256
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 128
MAX_NEW_TOKENS = 8192
MAX_RESULT_TTL_S = 30 * 86400
MAX_METADATA_BYTES = 16_384
MAX_PRIORITY = 1000
MAX_TOP_LOGPROBS = 20

# The record of job "x" has its events at "{P}:job:x:events", which is also where the
# record of a job "x:events" would go: such ids are refused.
EVENTS_KEY_SUFFIX = ":events"


# The shape of a stream entry ID ("1795873779512-0"). A job without an id takes the entry
# ID XADD gave it, so a client-chosen id of this shape could squat on the record of a
# plain-Redis producer's future job (a tightening of v1, like the ":events" rule).
ENTRY_ID_PATTERN = r"^[0-9]+-[0-9]+$"
_ENTRY_ID = re.compile(ENTRY_ID_PATTERN)


def _not_another_jobs_key(job_id: str) -> str:
    if job_id.endswith(EVENTS_KEY_SUFFIX):
        raise ValueError(f"must not end in {EVENTS_KEY_SUFFIX!r} (another job's events key)")
    return job_id


def oversized(payload: str | bytes) -> int | None:
    """The UTF-8 size of a ``job`` field over :data:`MAX_JOB_BYTES`; None when it fits (a
    text short enough in characters is not encoded to learn it)."""
    if isinstance(payload, str):
        if len(payload) * 4 <= MAX_JOB_BYTES:  # a character is at most four bytes
            return None
        payload = payload.encode("utf-8", "surrogatepass")
    return len(payload) if len(payload) > MAX_JOB_BYTES else None


def too_large_message(size: int) -> str:
    """Why a job over the bound is refused; the same words from producer and worker."""
    return f"job: {size} bytes as JSON, over the protocol's {MAX_JOB_BYTES} (MAX_JOB_BYTES)"


def is_entry_id(job_id: str) -> bool:
    """Whether ``job_id`` has the shape of a stream entry ID (``<ms>-<seq>``)."""
    return _ENTRY_ID.match(job_id) is not None


def _not_an_entry_id(job_id: str) -> str:
    if is_entry_id(job_id):
        raise ValueError(
            "must not have the shape of a stream entry ID (<digits>-<digits>): those name "
            "jobs sent without an id"
        )
    return job_id


# Any job's id, as read, waited on or cancelled: stream entry IDs included.
JobId = Annotated[
    str,
    StringConstraints(pattern=JOB_ID_PATTERN),
    AfterValidator(_not_another_jobs_key),
    Field(json_schema_extra={"not": {"pattern": f"{EVENTS_KEY_SUFFIX}$"}}),
]
# An id a client chooses for a new job.
ClientJobId = Annotated[
    str,
    StringConstraints(pattern=JOB_ID_PATTERN),
    AfterValidator(_not_another_jobs_key),
    AfterValidator(_not_an_entry_id),
    Field(
        json_schema_extra={
            "not": {"anyOf": [{"pattern": f"{EVENTS_KEY_SUFFIX}$"}, {"pattern": ENTRY_ID_PATTERN}]}
        }
    ),
]
AdapterName = Annotated[str, StringConstraints(pattern=ADAPTER_NAME_PATTERN)]
# A tenant is named like an adapter: it appears in metrics labels and in settings
# (LORAQ_TENANT_WEIGHTS "a=2,b=1"), where separators would be ambiguous.
TENANT_PATTERN = ADAPTER_NAME_PATTERN
TenantName = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]


class GenerationParams(BaseModel):
    """Sampling and length parameters of one generation."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1000, description="0 turns top-k filtering off.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    # v1.4 (additive): None by default, so that a producer leaves them out and a worker
    # older than them (which refuses unknown fields) still takes the job.
    presence_penalty: float | None = Field(
        None,
        ge=-2.0,
        le=2.0,
        description="Subtracted from the score of every token already generated; null is "
        "0. Added in v1.4.",
    )
    frequency_penalty: float | None = Field(
        None,
        ge=-2.0,
        le=2.0,
        description="Subtracted from a token's score once per time it was generated; null "
        "is 0. Added in v1.4.",
    )
    repetition_penalty: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="Divides the positive scores (multiplies the negative ones) of tokens "
        "in the prompt or generated; null is 1 (off). Added in v1.4.",
    )
    min_p: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Drops tokens less likely than min_p times the likeliest one; null is "
        "0 (off). Added in v1.4.",
    )
    logprobs: bool | None = Field(
        None,
        description="Return each generated token's log-probability in the result; null is "
        "false. Added in v1.4.",
    )
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With logprobs: also this many likeliest tokens at each step; null is "
        "0. Added in v1.4.",
    )
    response_format: ResponseFormat | None = Field(
        None,
        description="The shape the text must have: text (null is text), json_object, "
        "json_schema (OpenAI's shape), regex or choice. Added in v1.4.",
    )

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> Self:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class Message(BaseModel):
    """One chat message; rendered through the model's chat template."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


# The "exactly one input" rule of the validator below, for JSON Schema users.
ONE_INPUT_SCHEMA: list[JsonValue] = [
    {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
]


class GenerationInput(BaseModel):
    """What to generate from: an adapter and exactly one of ``prompt`` and ``messages``.

    Shared by the queued :class:`Job` and the synchronous HTTP request.
    """

    model_config = ConfigDict(
        extra="forbid",
        # NaN and infinities are not JSON: orjson would silently write them as null.
        allow_inf_nan=False,
        json_schema_extra={"oneOf": ONE_INPUT_SCHEMA},
    )

    adapter: Annotated[str, StringConstraints(pattern=ADAPTER_FIELD_PATTERN)] | None = Field(
        None, description='Registered adapter name; null or "" selects the base model.'
    )
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    messages: list[Message] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    params: GenerationParams = Field(default_factory=GenerationParams)

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' and 'messages' is required")
        return self

    @property
    def adapter_name(self) -> str | None:
        """The adapter to use, ``None`` for the base model."""
        return self.adapter or None


class Job(GenerationInput):
    """A generation job. Exactly one of ``prompt`` and ``messages`` is required."""

    id: ClientJobId | None = Field(
        None,
        description="If absent, the stream entry ID returned by XADD is the job id; an id "
        "of that shape (<digits>-<digits>) is refused.",
    )
    # None, not 0, by default: a producer then leaves the field out, and a worker older
    # than the field (which refuses unknown fields) still takes its jobs.
    priority: int | None = Field(
        None,
        ge=-MAX_PRIORITY,
        le=MAX_PRIORITY,
        description="Higher starts first, within the workers' aging bound (max_passover_s); "
        "null is 0.",
    )
    # v1.4 (additive): None by default for the same reason as priority.
    tenant: TenantName | None = Field(
        None,
        description="Who the job is for: within one priority, tenants share the workers by "
        "weight (tenant_weights); null is the default tenant. Over HTTP with API keys the "
        "key's own tenant. Added in v1.4.",
    )
    deadline: float | None = Field(
        None, gt=0, description="Epoch seconds; a job not started by then ends 'expired'."
    )
    result_ttl: int | None = Field(
        None, ge=1, le=MAX_RESULT_TTL_S, description="Seconds the record lives after the end."
    )
    metadata: dict[str, JsonValue] | None = Field(
        None, description="Echoed back untouched in the job record."
    )

    @model_validator(mode="after")
    def _metadata_fits(self) -> Job:
        if self.metadata is not None and len(_metadata_json(self.metadata)) > MAX_METADATA_BYTES:
            raise ValueError(f"'metadata' is over {MAX_METADATA_BYTES} bytes as JSON")
        return self


def _metadata_json(metadata: dict[str, JsonValue]) -> bytes:
    """``metadata`` as the JSON a record stores; ``ValueError`` for what JSON cannot hold
    (integers past 64 bits, which Python's own JSON parser accepts)."""
    try:
        return orjson.dumps(metadata)
    except TypeError as exc:
        raise ValueError(f"'metadata' cannot be stored as JSON: {exc}") from None
