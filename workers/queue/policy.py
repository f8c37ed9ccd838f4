"""Pure decisions of the queue consumer: what to read, what a payload is, when to retry.

Nothing here talks to Redis or Ray; the consumer carries the decisions out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from schemas import ErrorType, GenerationParams, Job, JobStatus
from schemas.jobs import (
    ADAPTER_FIELD_PATTERN,
    JOB_ID_PATTERN,
    MAX_NEW_TOKENS,
    MAX_PRIORITY,
    TENANT_PATTERN,
    is_entry_id,
    oversized,
    too_large_message,
)
from schemas.validation import InvalidJob, clip, parse_job

_JOB_ID = re.compile(JOB_ID_PATTERN)
JOB_FIELD = "job"
# The id of a job too large to parse, read only where it is the object's first key: a
# key further on could sit in a nested object, and finding out means parsing it all.
_LEADING_ID = re.compile(r'\s*\{\s*"id"\s*:\s*"([^"\\]{1,128})"')


@dataclass(frozen=True)
class Rejected:
    """A stream entry that is not a valid job, with the id to answer it under."""

    job_id: str
    message: str
    payload: str


@dataclass(frozen=True)
class Retry:
    """Run the job again after ``delay_s``."""

    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    """End the job ``failed`` with this error."""

    type: ErrorType
    message: str


def read_count(free_slots: int, max_read: int) -> int:
    """How many entries to read: never more than the free in-flight slots.

    Reading only what can start now keeps waiting jobs in Redis, where any consumer can
    take them, instead of in this replica's memory.
    """
    return max(0, min(free_slots, max_read))


def created_at_of(entry_id: str) -> float:
    """Epoch seconds of a stream entry ID (``<ms>-<seq>``): when it was added."""
    millis, _, _ = entry_id.partition("-")
    return int(millis) / 1000 if millis.isdigit() else 0.0


def recover_job_id(entry_id: str, data: Any) -> str:
    """The id to answer a payload under: its own ``id`` when valid, else the entry ID.

    An id shaped like an entry ID is never taken: it may be another producer's job.
    """
    if isinstance(data, dict):
        candidate = data.get("id")
        if isinstance(candidate, str) and _JOB_ID.match(candidate) and not is_entry_id(candidate):
            return candidate
    return entry_id


def parse_entry(
    entry_id: str, fields: Mapping[str, str], *, repeated: Collection[str] = ()
) -> Job | Rejected:
    """The job of a ``{P}:jobs`` entry, or why it is not one.

    A job without an ``id`` takes the entry ID, which is what its producer got back from
    XADD; so does a payload that cannot be read at all, and an entry with more than one
    ``job`` field (``repeated``): which of them is the job is anyone's guess, so none is.
    A payload over ``MAX_JOB_BYTES`` is refused unread: its own ``id`` answers it only
    when that is the object's first key (the Python producer writes it first).
    """
    payload = fields.get(JOB_FIELD)
    if payload is None:
        names = clip(", ".join(sorted(fields)) or "none")
        return Rejected(entry_id, f"entry has no '{JOB_FIELD}' field (fields: {names})", "")
    if JOB_FIELD in repeated:
        message = f"entry has more than one '{JOB_FIELD}' field; send exactly one"
        return Rejected(entry_id, message, payload)
    size = oversized(payload)
    if size is not None:
        leading = _LEADING_ID.match(payload[:256])
        data = {"id": leading.group(1)} if leading else None
        return Rejected(recover_job_id(entry_id, data), too_large_message(size), payload)
    try:
        job = parse_job(payload)
    except InvalidJob as exc:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            data = None
        return Rejected(recover_job_id(entry_id, data), str(exc), payload)
    if job.id is None:
        job = job.model_copy(update={"id": entry_id})
    return job


def is_expired(job: Job | Claim, now: float) -> bool:
    """Whether the job's deadline passed before it started."""
    return job.deadline is not None and now > job.deadline


class Claim(NamedTuple):
    """What the scheduling window plans a claimed job by. The job is validated whole
    when it starts (the runner parses its entry then), not when it is claimed: a flood
    of thousands is claimed at a few microseconds an entry, so the jobs behind it in the
    stream (another tenant's) reach the plan in milliseconds. (A tuple: the cheapest
    record to build, once per entry.)"""

    id: str
    adapter: str | None  # None: the base model
    priority: int
    tenant: str | None
    tokens: int  # max_new_tokens: what the tenant is charged
    deadline: float | None

    @classmethod
    def of(cls, job: Job, entry_id: str) -> Claim:
        return cls(
            job.id or entry_id,
            job.adapter_name,
            job.priority or 0,
            job.tenant,
            job.params.max_new_tokens,
            job.deadline,
        )


_DEFAULT_TOKENS: int = GenerationParams.model_fields["max_new_tokens"].default
_ADAPTER = re.compile(ADAPTER_FIELD_PATTERN)
_TENANT = re.compile(TENANT_PATTERN)


def claim_entry(entry_id: str, fields: Mapping[str, str]) -> Claim | None:
    """The window's view of a ``{P}:jobs`` entry; None for one that is no job (answered at
    once, without a model, by the runner's full parse).

    Each field is taken as is only when its JSON type is the one the schema keeps, so that
    a job the schema accepts gets the same view either way; any other type (a number in a
    string, which the schema coerces) goes through the full parse. A job that is invalid
    in a way only the full parse sees (its id, its prompt, a repeated key, a field the
    schema does not know) is planned like any other and rejected when it starts.
    """
    payload = fields.get(JOB_FIELD)
    if payload is None or oversized(payload) is not None:
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(data) is dict:
        get = data.get
        params = get("params")
        tokens: object = _DEFAULT_TOKENS
        if params is not None:
            tokens = params.get("max_new_tokens", _DEFAULT_TOKENS) if type(params) is dict else None
        job_id, adapter, priority = get("id"), get("adapter"), get("priority")
        tenant, deadline = get("tenant"), get("deadline")
        # Spelled out, not looped: this runs once per entry of a flood. What the plan and
        # the slot lease act on is checked as the schema checks it (names, bounds): a
        # bad adapter name or tenant never takes a slot or a share, even for a moment.
        if (
            type(tokens) is int
            and 1 <= tokens <= MAX_NEW_TOKENS
            and (job_id is None or type(job_id) is str)
            and (adapter is None or (type(adapter) is str and _ADAPTER.fullmatch(adapter)))
            and (
                priority is None
                or (type(priority) is int and -MAX_PRIORITY <= priority <= MAX_PRIORITY)
            )
            and (tenant is None or (type(tenant) is str and _TENANT.fullmatch(tenant)))
            and (deadline is None or type(deadline) is float or type(deadline) is int)
        ):
            return Claim(
                job_id or entry_id, adapter or None, priority or 0, tenant, tokens, deadline
            )
    parsed = parse_entry(entry_id, fields)
    return Claim.of(parsed, entry_id) if isinstance(parsed, Job) else None


def retry_delay_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff after the ``attempts``-th failed start: base, 2·base, … ≤ cap."""
    return float(min(cap_s, base_s * 2 ** max(0, attempts - 1)))


# Failures the job itself caused: running it again gives the same answer.
JOB_CAUSED = frozenset(
    {ErrorType.VALIDATION, ErrorType.UNKNOWN_ADAPTER, ErrorType.INCOMPATIBLE_ADAPTER}
)


# Failures that end a job under their own type once its attempts run out.
SAID_AS_IT_IS = frozenset({ErrorType.ADAPTER_UNAVAILABLE, ErrorType.MODEL_UNAVAILABLE})


def after_failure(
    *,
    error_type: ErrorType,
    message: str,
    attempts: int,
    max_attempts: int,
    base_s: float,
    cap_s: float,
    deadline: float | None = None,
    now: float = 0.0,
) -> Retry | GiveUp:
    """What to do after an attempt failed.

    Failures the job caused (validation, unknown or incompatible adapter) are final at
    once; others (a replica died, the device ran out of memory) are retried with backoff
    until the job has been started ``max_attempts`` times. A job no model replica could
    run (``model_unavailable``) also ends once its ``deadline`` passed: running it later
    would only answer ``expired``.
    """
    if error_type in JOB_CAUSED:
        return GiveUp(error_type, message)
    if error_type is ErrorType.MODEL_UNAVAILABLE and deadline is not None and now > deadline:
        return GiveUp(error_type, f"{message} (the job's deadline passed meanwhile)")
    if attempts < max_attempts:
        return Retry(retry_delay_s(attempts, base_s, cap_s))
    if error_type in SAID_AS_IT_IS:
        # Said as it is: the store or the model stayed away, not that the job is broken.
        return GiveUp(error_type, f"{message} (gave up after {attempts} attempts)")
    return GiveUp(
        ErrorType.ATTEMPTS_EXHAUSTED,
        f"the job failed on each of its {attempts} attempts; last error: {message}",
    )


def persistence_warnings(config: Mapping[str, str]) -> list[str]:
    """What a Redis server's settings (``CONFIG GET`` output) risk for the queue."""
    warnings = []
    if config.get("appendonly", "yes") != "yes":
        warnings.append(
            "Redis runs without AOF (appendonly no): jobs and results of the last moments "
            "before a restart are lost; set appendonly yes and appendfsync everysec"
        )
    policy_name = config.get("maxmemory-policy", "noeviction")
    if policy_name != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy_name}: under memory pressure it may evict "
            "jobs, records or the stream itself; set maxmemory-policy noeviction"
        )
    return warnings


def dead_copy(payload: str, max_bytes: int) -> str:
    """What ``{P}:dead`` keeps of a payload: all of it, or its first bytes and a note of
    the whole size, in at most ``max_bytes`` UTF-8 bytes (a client's garbage must not
    fill Redis twice). A cut copy is no longer JSON, so it cannot be requeued."""
    data = payload.encode()
    if len(data) <= max_bytes:
        return payload
    note = f"…[cut: {len(data)} bytes]"
    head = data[: max_bytes - len(note.encode())]
    # A cut inside a multi-byte character drops that character's first bytes.
    return head.decode(errors="ignore") + note


def dead_letters(status: JobStatus) -> bool:
    """Whether a job ending in ``status`` is copied to ``{P}:dead`` for an operator."""
    return status is JobStatus.FAILED
