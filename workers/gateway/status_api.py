"""Health, readiness and the adapter list."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from schemas.model_starts import StartFailures
from workers.gateway.api_models import AdapterList, Check, Health, Readiness
from workers.gateway.services import Services, ServicesDep, adapter_info

# Readiness probes must answer fast even when a dependency hangs.
PROBE_TIMEOUT_S = 2.0

health_router = APIRouter(tags=["health"])
router = APIRouter(tags=["adapters"])


@health_router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The gateway is up (says nothing about the model or Redis)."""
    return Health()


@health_router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The model is not ready."}},
    summary="Readiness",
)
async def readyz(svc: ServicesDep) -> JSONResponse:
    """200 when a model replica answers (its model is loaded), else 503. Redis is checked
    too and reported apart: the sync and OpenAI endpoints work without it. Failed starts
    of model replicas since one last started are in the model's detail, with the last
    cause."""
    model, redis, starts = await asyncio.gather(
        _model_check(svc), _redis_check(svc), _start_failures(svc)
    )
    if starts:
        model = Check(ok=model.ok, detail=f"{model.detail}; {starts}")
    body = Readiness(ready=model.ok, model=model, redis=redis)
    return JSONResponse(body.model_dump(), status_code=200 if model.ok else 503)


async def _model_check(svc: Services) -> Check:
    try:
        replica = await svc.model.ping(PROBE_TIMEOUT_S)
    except Exception as exc:
        return Check(ok=False, detail=f"no model replica answered: {type(exc).__name__}")
    return Check(ok=True, detail=f"replica {replica} answered")


async def _start_failures(svc: Services) -> str:
    """``n failed starts, last on <replica>: <cause>`` from ``{P}:model:starts``, or ``""``."""
    client, keys = svc.producer.client, svc.producer.keys
    try:
        fields = await asyncio.wait_for(client.hgetall(keys.model_starts), PROBE_TIMEOUT_S)
    except Exception:  # Redis is reported by its own check
        return ""
    record = StartFailures.from_hash(fields)
    return record.summary() if record else ""


async def _redis_check(svc: Services) -> Check:
    try:
        await asyncio.wait_for(svc.producer.client.ping(), PROBE_TIMEOUT_S)
    except Exception as exc:
        return Check(ok=False, detail=f"redis unreachable: {type(exc).__name__}")
    return Check(ok=True)


@router.get(
    "/v1/adapters",
    response_model=AdapterList,
    summary="Registered adapters and where they are loaded",
)
async def list_adapters(svc: ServicesDep) -> AdapterList:
    """Every registered adapter with its rank and target modules, and the model replicas
    that hold it on their device now."""
    stats = await svc.model.replica_stats(PROBE_TIMEOUT_S * 5)
    loaded_on: dict[str, list[str]] = {}
    for replica, replica_stats in sorted(stats.items()):
        for name in replica_stats.adapters:
            loaded_on.setdefault(name, []).append(replica)
    adapters = [
        adapter_info(name, folder, loaded_on.get(name, []))
        for name, folder in (await svc.adapter_folders()).items()
    ]
    return AdapterList(
        base_model=svc.settings.base_model_name, replicas=sorted(stats), adapters=adapters
    )
