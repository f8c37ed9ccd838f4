"""The queue over HTTP: submit jobs, read, wait for and cancel them (all through Redis)."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query

from producer.errors import JobTimeoutError, RateLimitedError, SubmitError
from schemas import Job, JobRecord
from schemas.jobs import JobId
from workers.gateway.api_models import MAX_JOBS_PER_REQUEST, CancelReply, JobsAccepted
from workers.gateway.auth import Caller, CallerDep
from workers.gateway.errors import ApiError, error_responses, queue_errors
from workers.gateway.services import Services, ServicesDep

# The documented bound; a server may shorten waits further (http_max_wait_s).
MAX_WAIT_S = 3600.0
DEFAULT_WAIT_S = 30.0

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobIdPath = Annotated[JobId, Path(description="The job's id.")]
JobsBody = Annotated[
    Job | Annotated[list[Job], Body(min_length=1, max_length=MAX_JOBS_PER_REQUEST)],
    Body(
        description="One job, or a list of jobs.",
        openapi_examples={
            "one": {"value": {"adapter": "upper", "prompt": "hello world"}},
            "many": {"value": [{"adapter": "rot13", "prompt": "ab"}, {"prompt": "cd"}]},
        },
    ),
]


def _not_found(job_id: str) -> ApiError:
    # Also the answer for another key's job: an id cannot be probed for existence.
    return ApiError(404, "not_found", f"job {job_id!r} does not exist (or has expired)")


async def _check_visible(svc: Services, caller: Caller, job_id: str) -> None:
    """404 unless the job exists and is ``caller``'s to see."""
    exists, owner = await svc.producer.owner(job_id)
    if not exists or not caller.may_see(owner):
        raise _not_found(job_id)


@router.post(
    "",
    status_code=202,
    response_model=JobsAccepted,
    responses=error_responses(400, 403, 409, 413, 422, 429, 503),
    summary="Queue one job or a list of jobs",
)
async def submit_jobs(body: JobsBody, svc: ServicesDep, caller: CallerDep) -> JobsAccepted:
    """Validate and enqueue the jobs; their ids come back in order (a job given an ``id``
    that already exists is not queued again: submission is idempotent). With API keys on,
    only the key that submitted a job (or an admin key) can read it, and a job runs as the
    key's tenant (403 for another's, unless the key is an admin key)."""
    given = body if isinstance(body, list) else [body]
    jobs = [job.model_copy(update={"tenant": caller.tenant_for(job.tenant)}) for job in given]
    with queue_errors():
        try:
            ids = await svc.producer.submit_many(jobs, owner=caller.owner)
        except RateLimitedError as exc:
            # The jobs before the refused one are queued: their ids are in the message.
            retry = str(math.ceil(exc.retry_after_s))
            raise ApiError(429, "rate_limited", str(exc), {"Retry-After": retry}) from exc
        except SubmitError as exc:
            raise ApiError(409, "conflict", str(exc)) from exc
    return JobsAccepted(ids=ids)


@router.get(
    "/{job_id}",
    response_model=JobRecord,
    responses=error_responses(404, 422, 503),
    summary="A job's record",
)
async def get_job(job_id: JobIdPath, svc: ServicesDep, caller: CallerDep) -> JobRecord:
    """The job's status, and its result or error once it has ended."""
    with queue_errors():
        await _check_visible(svc, caller, job_id)
        record = await svc.producer.get(job_id)
    if record is None:
        raise _not_found(job_id)
    return record


@router.get(
    "/{job_id}/wait",
    response_model=JobRecord,
    responses=error_responses(404, 408, 422, 503),
    summary="Wait for a job to end",
)
async def wait_job(
    job_id: JobIdPath,
    svc: ServicesDep,
    caller: CallerDep,
    timeout: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Seconds to wait before answering 408 (the server may cap it lower).",
        ),
    ] = DEFAULT_WAIT_S,
) -> JobRecord:
    """The job's record once its status is final; 408 when it has not ended after
    ``timeout`` seconds, or after the server's longest wait (call again to keep waiting)."""
    with queue_errors():
        await _check_visible(svc, caller, job_id)
        try:
            return await svc.producer.wait(
                job_id, timeout=min(timeout, svc.settings.http_max_wait_s)
            )
        except JobTimeoutError as exc:
            raise ApiError(408, "timeout", str(exc)) from exc


@router.delete(
    "/{job_id}",
    response_model=CancelReply,
    responses=error_responses(404, 409, 422, 503),
    summary="Cancel a job",
)
async def cancel_job(job_id: JobIdPath, svc: ServicesDep, caller: CallerDep) -> CancelReply:
    """Cancel a queued or running job: a queued one ends ``cancelled`` without running, a
    running one stops at its next step. 404 for an id with no job (nothing is flagged, so
    a job submitted later under it runs), 409 when it has already ended."""
    with queue_errors():
        await _check_visible(svc, caller, job_id)
        cancelled = await svc.producer.cancel(job_id, owner=caller.required_owner)
        record = await svc.producer.get(job_id)
    if record is None:
        raise _not_found(job_id)
    if not cancelled:
        raise ApiError(409, "conflict", f"job {job_id!r} already ended: {record.status.value}")
    return CancelReply(id=job_id, status=record.status)
