"""Pure parts of submitting: job ids, validation, the enqueue script's arguments and replies.

Shared by the sync and the async producer; nothing here talks to Redis.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import redis.exceptions
from pydantic import BaseModel, TypeAdapter, ValidationError
from typing_extensions import Unpack

from producer.errors import JobTooLargeError, JobValidationError
from schemas import codec
from schemas.jobs import GenerationParams, Job, JobId, is_entry_id, oversized, too_large_message
from schemas.keys import Keys
from schemas.validation import InvalidJob, describe, validate_job

JobInput = Job | Mapping[str, Any]


def new_job_id() -> str:
    """A unique job id that sorts by creation time: nanoseconds (hex) then 40 random bits.

    16 hex digits of nanoseconds keep a fixed width (and so a lexical order) until 2554.
    Hex digits are decimal ones now and then: such an id has the shape of a stream entry
    ID, which clients may not choose, and is drawn again.
    """
    while True:
        job_id = f"{time.time_ns():016x}-{secrets.token_hex(5)}"
        if not is_entry_id(job_id):
            return job_id


_JOB_ID: TypeAdapter[str] = TypeAdapter(JobId)


def checked_job_id(job_id: str) -> str:
    """``job_id`` when it is a valid id; :class:`JobValidationError` otherwise.

    Reading or cancelling goes to keys named after the id: an id such as ``x:events``
    would name another job's key, and Redis would answer a type error.
    """
    try:
        return _JOB_ID.validate_python(job_id)
    except ValidationError as exc:
        problem = describe(exc).removeprefix("job: ")
        raise JobValidationError(f"id {job_id!r}: {problem}") from None


class JobFields(TypedDict, total=False):
    """The keyword arguments of ``submit``: the :class:`Job` fields besides ``prompt``."""

    adapter: str | None
    messages: Sequence[Mapping[str, Any]] | None
    params: Mapping[str, Any] | GenerationParams | None
    id: str | None
    priority: int | None
    tenant: str | None
    deadline: float | None
    result_ttl: int | None
    metadata: Mapping[str, Any] | None


def build_job(prompt: str | None = None, **fields: Unpack[JobFields]) -> Job:
    """A validated :class:`Job` with an id; raises :class:`JobValidationError`."""
    data: dict[str, Any] = {"prompt": prompt, **fields}
    if isinstance(data.get("params"), BaseModel):
        data["params"] = data["params"].model_dump()
    return prepare_job({k: v for k, v in data.items() if v is not None})


def prepare_job(job: JobInput) -> Job:
    """Validate a job (again, if it is a :class:`Job`: models can be built unchecked) and
    give it an id when it has none; raises :class:`JobValidationError`."""
    data = job.model_dump(exclude_none=True) if isinstance(job, Job) else dict(job)
    if data.get("id") is None:
        data["id"] = new_job_id()
    try:
        return validate_job(data)
    except InvalidJob as exc:
        raise JobValidationError(str(exc)) from None


def prepare_jobs(jobs: Iterable[JobInput]) -> list[Job]:
    """:func:`prepare_job` for each job; the error names the first bad job by its index."""
    prepared = []
    for index, job in enumerate(jobs):
        try:
            prepared.append(prepare_job(job))
        except JobValidationError as exc:
            raise JobValidationError(f"jobs[{index}]: {exc}") from None
    return prepared


@dataclass(frozen=True)
class TenantRate:
    """The token bucket every tenant's submissions pass (``per_s`` 0: none)."""

    per_s: float = 0.0
    burst: int = 0  # 0: one second's worth, at least 1

    @property
    def bucket(self) -> int:
        """Jobs a tenant may submit at once after a quiet time."""
        return self.burst or max(1, math.ceil(self.per_s))


@dataclass(frozen=True)
class EnqueueCall:
    """KEYS and ARGV of the enqueue script for one job."""

    job_id: str
    keys: list[str]
    args: list[str]


def enqueue_call(
    keys: Keys,
    job: Job,
    *,
    job_ttl_s: int,
    owner: str | None = None,
    now: float | None = None,
    rate: TenantRate | None = None,
) -> EnqueueCall:
    """The enqueue script's arguments for a prepared job (see ``producer.scripts.ENQUEUE``);
    ``owner`` goes to the record's ``owner`` field; with a ``rate``, the job's tenant's
    bucket is checked and charged in the same script. A job over ``MAX_JOB_BYTES`` as
    JSON raises :class:`JobTooLargeError` (the workers would refuse it unread)."""
    assert job.id is not None, "prepare_job() assigns an id"
    payload = codec.dumps(job)
    size = oversized(payload)
    if size is not None:
        raise JobTooLargeError(f"{job.id}: {too_large_message(size)}")
    created_at = time.time() if now is None else now
    metadata = codec.dumps(job.metadata) if job.metadata is not None else ""
    call = EnqueueCall(
        job_id=job.id,
        keys=[keys.jobs, keys.job(job.id)],
        args=[
            payload,
            str(job_ttl_s),
            job.adapter or "",
            repr(created_at),
            metadata,
            owner or "",
        ],
    )
    if rate is not None and rate.per_s > 0:
        call.keys.append(keys.tenant_rate(job.tenant or ""))
        call.args.extend([repr(rate.per_s), str(rate.bucket)])
    return call


def retry_after_s(reply: Any) -> float | None:
    """Seconds until the tenant may submit again, when the enqueue script refused the job
    for its tenant's rate; ``None`` for any other reply."""
    if isinstance(reply, int) and not isinstance(reply, bool) and reply < 0:
        return -reply / 1000
    return None


def rate_refusal(retry_s: float) -> str:
    """The reason a job over its tenant's rate was not submitted."""
    return f"its tenant is over its rate (tenant_rate_per_s); retry in {retry_s:.2f} s"


@dataclass
class EnqueueOutcome:
    """What a pipeline of enqueue calls did: each id is either submitted or failed."""

    submitted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    script_missing: bool = False
    # The longest wait a tenant's rate asked for (0: no job was refused for a rate).
    retry_after_s: float = 0.0

    def extend(self, other: EnqueueOutcome) -> None:
        """Add the outcome of a later chunk."""
        self.submitted.extend(other.submitted)
        self.failed.update(other.failed)
        self.retry_after_s = max(self.retry_after_s, other.retry_after_s)


def sort_replies(calls: Sequence[EnqueueCall], replies: Sequence[Any]) -> EnqueueOutcome:
    """Sort a pipeline's replies (errors in place, ``raise_on_error=False``) by outcome.

    ``script_missing`` means the server did not know the script (NOSCRIPT, e.g. after a
    restart): the caller loads it and sends the whole chunk again, which is safe because
    enqueueing an id that exists is a no-op.
    """
    outcome = EnqueueOutcome()
    for call, reply in zip(calls, replies, strict=True):
        wait_s = retry_after_s(reply)
        if isinstance(reply, Exception):
            outcome.failed[call.job_id] = str(reply)
            outcome.script_missing |= isinstance(reply, redis.exceptions.NoScriptError)
        elif wait_s is not None:
            outcome.failed[call.job_id] = rate_refusal(wait_s)
            outcome.retry_after_s = max(outcome.retry_after_s, wait_s)
        else:
            outcome.submitted.append(call.job_id)
    return outcome


def chunked(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``items`` in slices of at most ``size``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return (items[start : start + size] for start in range(0, len(items), size))
