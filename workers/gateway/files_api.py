"""``/v1/files`` of OpenAI's API: batch input files in, output and error files out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from schemas.batches import FileDeleted, FileObject
from workers.gateway.auth import CallerDep
from workers.gateway.batches import not_found
from workers.gateway.errors import ApiError, error_responses, queue_errors
from workers.gateway.multipart import parse_form
from workers.gateway.services import ServicesDep

router = APIRouter(prefix="/v1/files", tags=["batches"])
FileIdPath = Annotated[str, Path(max_length=128, description="The file's id.")]
UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=FileObject,
    responses=error_responses(400, 413, 503),
    openapi_extra=UPLOAD_DOC,
    summary="Upload a batch input file (JSONL)",
)
async def upload_file(request: Request, svc: ServicesDep, caller: CallerDep) -> FileObject:
    """One ``{custom_id, method, url, body}`` object per line; ``purpose`` must be
    ``batch``. Over ``max_file_bytes`` → 413."""
    limit = svc.settings.max_file_bytes
    form = parse_form(request.headers.get("content-type", ""), await request.body())
    if "file" not in form or form["file"].filename is None:
        raise ApiError(400, "validation", "the form has no 'file' field with a file in it")
    purpose = form.get("purpose")
    if purpose is None or purpose.value != b"batch":
        raise ApiError(400, "validation", "purpose must be 'batch' (the only purpose served)")
    content = form["file"].value
    if len(content) > limit:
        message = f"the file is {len(content)} bytes, over the limit of {limit} (max_file_bytes)"
        raise ApiError(413, "payload_too_large", message)
    with queue_errors():
        return await svc.batches.upload(
            form["file"].filename or "input.jsonl", content, caller.owner
        )


@router.get(
    "/{file_id}", response_model=FileObject, responses=error_responses(404, 503), summary="A file"
)
async def get_file(file_id: FileIdPath, svc: ServicesDep, caller: CallerDep) -> FileObject:
    """The file's size, name and purpose."""
    with queue_errors():
        return await svc.batches.visible_file(file_id, caller)


@router.get(
    "/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/jsonl": {}}}, **error_responses(404, 503)},
    summary="A file's content",
)
async def file_content(file_id: FileIdPath, svc: ServicesDep, caller: CallerDep) -> Response:
    """The file's bytes: the JSONL uploaded, or a batch's output or error lines."""
    with queue_errors():
        await svc.batches.visible_file(file_id, caller)
        content = await svc.batches.store.file_content(file_id)
    if content is None:
        raise not_found("file", file_id)
    return Response(content, media_type="application/jsonl")


@router.delete(
    "/{file_id}",
    response_model=FileDeleted,
    responses=error_responses(404, 503),
    summary="Delete a file",
)
async def delete_file(file_id: FileIdPath, svc: ServicesDep, caller: CallerDep) -> FileDeleted:
    """Delete the file (a batch already created from it keeps its jobs)."""
    with queue_errors():
        await svc.batches.visible_file(file_id, caller)
        deleted = await svc.batches.store.delete_file(file_id)
    return FileDeleted(id=file_id, deleted=deleted)
