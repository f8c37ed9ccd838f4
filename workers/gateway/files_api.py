"""``/v1/files`` of OpenAI's API: batch input files in, output and error files out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from schemas.batches import FileDeleted, FileObject
from workers.gateway.auth import CallerDep
from workers.gateway.batches import not_found
from workers.gateway.errors import ApiError, error_responses, queue_errors
from workers.gateway.heap import trim_heap_soon
from workers.gateway.jsonl_bounds import LineBounds, LineLimitError, slices
from workers.gateway.multipart import FormReader
from workers.gateway.services import ServicesDep
from workers.settings import WorkerSettings

router = APIRouter(prefix="/v1/files", tags=["batches"])
# Sent with a refusal of an upload cut off mid-body: the rest of it may still be on its way.
_CLOSE = {"Connection": "close"}
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
    responses=error_responses(400, 408, 413, 503),
    openapi_extra=UPLOAD_DOC,
    summary="Upload a batch input file (JSONL)",
)
async def upload_file(request: Request, svc: ServicesDep, caller: CallerDep) -> FileObject:
    """One ``{custom_id, method, url, body}`` object per line; ``purpose`` must be
    ``batch``. Over ``max_file_bytes`` → 413; more than ``max_batch_lines`` lines, a line
    over 1 MiB, or a form past its bounds (docs/SECURITY.md) → 400, as soon as the body
    crosses the bound."""
    try:
        form, content = await _read_upload(request, svc.settings)
    finally:
        trim_heap_soon()  # the body went through the replica's heap, read or not
    if form.filename is None:
        raise ApiError(400, "validation", "the form has no 'file' field with a file in it")
    if form.fields.get("purpose") != b"batch":
        raise ApiError(400, "validation", "purpose must be 'batch' (the only purpose served)")
    with queue_errors():
        return await svc.batches.upload(form.filename or "input.jsonl", content, caller.owner)


async def _read_upload(request: Request, settings: WorkerSettings) -> tuple[FormReader, bytearray]:
    """The form and its file's bytes, read as they stream, a slice at a time; the first
    bound crossed refuses the upload there (and closes the connection: the rest of the
    body is not read)."""
    limit = settings.max_file_bytes
    bounds = LineBounds(max_lines=settings.max_batch_lines)
    content = bytearray()

    def on_file(data: bytes) -> None:
        if len(content) + len(data) > limit:
            message = f"the file is over the limit of {limit} bytes (max_file_bytes)"
            raise ApiError(413, "payload_too_large", message, _CLOSE)
        bounds.feed(data)
        content.extend(data)

    form = FormReader.for_content_type(request.headers.get("content-type", ""), on_file)
    try:
        async for chunk in request.stream():
            for piece in slices(chunk):
                form.feed(piece)
                await asyncio.sleep(0)  # other requests run between slices
        form.finish()
        bounds.finish()
    except LineLimitError as exc:
        raise ApiError(400, "validation", str(exc), _CLOSE) from None
    except ApiError as exc:
        raise ApiError(
            exc.status, exc.type, exc.message, {**(exc.headers or {}), **_CLOSE}
        ) from None
    return form, content


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
