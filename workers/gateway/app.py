"""The FastAPI application of the gateway, built from its services."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from workers.gateway import (
    batches_api,
    files_api,
    generate_api,
    jobs_api,
    openai_api,
    status_api,
)
from workers.gateway.auth import KeyBeforeBody, key_dependency
from workers.gateway.errors import error_responses, install_error_handlers
from workers.gateway.limits import BodySizeLimit, UniqueJsonKeys
from workers.gateway.services import Services

DESCRIPTION = """\
One base model with many LoRA adapters.

* `POST /v1/generate` answers synchronously, straight from the model replicas (no Redis).
* `/v1/jobs` is the Redis job queue over HTTP (503 while Redis is unreachable).
* `/v1/models`, `/v1/completions`, `/v1/chat/completions` follow OpenAI's API; `model`
  names an adapter or the base model.
* `/v1/files` and `/v1/batches` are OpenAI's Batch API over the queue: each line of a
  batch's input file runs as a job, below interactive jobs in priority.

Errors are `{"error": {"type": ..., "message": ...}}`. When API keys are configured,
every endpoint but `/healthz` and `/readyz` needs `Authorization: Bearer <key>` (this
document and `/docs` too, unless `LORAQ_HTTP_DOCS_PUBLIC=true`).
"""


def create_app(svc: Services) -> FastAPI:
    """The gateway's routes, error envelope, body size limit and (if configured) API keys."""
    guards = [key_dependency(svc.keys)] if svc.keys.enabled else []
    docs_guarded = bool(guards) and not svc.settings.http_docs_public
    app = FastAPI(
        title="loraq gateway",
        version="1",
        description=DESCRIPTION,
        # Closed docs are served by guarded routes of our own (below).
        openapi_url=None if docs_guarded else "/openapi.json",
        docs_url=None if docs_guarded else "/docs",
        redoc_url=None if docs_guarded else "/redoc",
    )
    app.state.services = svc
    install_error_handlers(app)
    # The last added runs first: the body is bounded before its keys are looked at.
    app.add_middleware(UniqueJsonKeys)
    app.add_middleware(
        BodySizeLimit,
        max_body_bytes=svc.settings.max_body_bytes,
        body_timeout_s=svc.settings.http_body_timeout_s,
        max_upload_bytes=svc.settings.max_file_bytes,
    )
    # Outermost: a body without a key is refused before a byte of it is read.
    app.add_middleware(KeyBeforeBody, keys=svc.keys)
    app.include_router(status_api.health_router)
    routers = [
        generate_api.router,
        jobs_api.router,
        status_api.router,
        openai_api.router,
        files_api.router,
        batches_api.router,
    ]
    if docs_guarded:
        routers.append(_docs_router())
    for router in routers:
        app.include_router(
            router, dependencies=guards, responses=error_responses(401) if guards else None
        )
    return app


def _docs_router() -> APIRouter:
    """``/openapi.json`` and ``/docs`` behind the API keys."""
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="loraq gateway")

    return router
