"""``/v1/batches`` of OpenAI's API: each line of the input file is a queue job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from schemas.batches import Batch, BatchCreate, BatchList
from workers.gateway.auth import CallerDep
from workers.gateway.errors import error_responses, queue_errors
from workers.gateway.services import ServicesDep

router = APIRouter(prefix="/v1/batches", tags=["batches"])
BatchIdPath = Annotated[str, Path(max_length=128, description="The batch's id.")]


@router.post(
    "",
    response_model=Batch,
    responses=error_responses(400, 404, 422, 503),
    summary="Create a batch",
)
async def create_batch(body: BatchCreate, svc: ServicesDep, caller: CallerDep) -> Batch:
    """Queue one job per line of ``input_file_id`` (at ``batch_priority``, below
    interactive jobs); lines that cannot run go to the error file. 404 for an unknown file."""
    with queue_errors():
        return await svc.batches.create(body, caller)


@router.get(
    "/{batch_id}", response_model=Batch, responses=error_responses(404, 503), summary="A batch"
)
async def get_batch(batch_id: BatchIdPath, svc: ServicesDep, caller: CallerDep) -> Batch:
    """The batch's status and request counts as its jobs stand."""
    with queue_errors():
        return await svc.batches.refresh(await svc.batches.visible_batch(batch_id, caller))


@router.get("", response_model=BatchList, responses=error_responses(503), summary="List batches")
async def list_batches(
    svc: ServicesDep,
    caller: CallerDep,
    after: Annotated[
        str | None, Query(max_length=128, description="Page on after this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """The caller's batches, newest first (admin keys: everyone's)."""
    with queue_errors():
        return await svc.batches.list(caller, after=after, limit=limit)


@router.post(
    "/{batch_id}/cancel",
    response_model=Batch,
    responses=error_responses(404, 409, 503),
    summary="Cancel a batch",
)
async def cancel_batch(batch_id: BatchIdPath, svc: ServicesDep, caller: CallerDep) -> Batch:
    """Lines not yet run never run; the batch goes ``cancelling``, then ``cancelled``."""
    with queue_errors():
        return await svc.batches.cancel(await svc.batches.visible_batch(batch_id, caller), caller)
