"""The FastAPI application of the gateway, built from its services."""

from __future__ import annotations

from fastapi import FastAPI

from workers.gateway import generate_api, jobs_api, openai_api, status_api
from workers.gateway.auth import key_dependency
from workers.gateway.errors import error_responses, install_error_handlers
from workers.gateway.limits import BodySizeLimit, UniqueJsonKeys
from workers.gateway.services import Services

DESCRIPTION = """\
One base model with many LoRA adapters.

* `POST /v1/generate` answers synchronously, straight from the model replicas (no Redis).
* `/v1/jobs` is the Redis job queue over HTTP (503 while Redis is unreachable).
* `/v1/models`, `/v1/completions`, `/v1/chat/completions` follow OpenAI's API; `model`
  names an adapter or the base model.

Errors are `{"error": {"type": ..., "message": ...}}`. When API keys are configured,
every endpoint but `/healthz` and `/readyz` needs `Authorization: Bearer <key>`.
"""


def create_app(svc: Services) -> FastAPI:
    """The gateway's routes, error envelope, body size limit and (if configured) API keys."""
    app = FastAPI(title="loraq gateway", version="1", description=DESCRIPTION)
    app.state.services = svc
    install_error_handlers(app)
    # The last added runs first: the body is bounded before its keys are looked at.
    app.add_middleware(UniqueJsonKeys)
    app.add_middleware(
        BodySizeLimit,
        max_body_bytes=svc.settings.max_body_bytes,
        body_timeout_s=svc.settings.http_body_timeout_s,
    )
    app.include_router(status_api.health_router)
    guards = [key_dependency(svc.keys)] if svc.keys.enabled else []
    for router in (generate_api.router, jobs_api.router, status_api.router, openai_api.router):
        app.include_router(
            router, dependencies=guards, responses=error_responses(401) if guards else None
        )
    return app
