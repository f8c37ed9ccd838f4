"""``POST /v1/generate``: synchronous generation straight on LoRAModel (works without Redis)."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter

from schemas import JobResult, Timings
from workers.engine.requests import GenerationRequest
from workers.gateway.api_models import GenerateRequest
from workers.gateway.errors import error_responses
from workers.gateway.services import ServicesDep

router = APIRouter(tags=["generation"])


@router.post(
    "/v1/generate",
    response_model=JobResult,
    responses=error_responses(400, 404, 413, 422),
    summary="Generate text synchronously",
)
async def generate(body: GenerateRequest, svc: ServicesDep) -> JobResult:
    """Run one generation on the model replicas and return its result.

    The adapter travels as Serve's multiplexed model id, so the request goes to a replica
    that has it warm. No Redis is involved: this endpoint keeps answering while the queue
    is down.
    """
    started = time.perf_counter()
    request = GenerationRequest(
        adapter=body.adapter or None,
        prompt=body.prompt,
        messages=body.messages,
        params=body.params,
        request_id=f"http-{uuid.uuid4().hex}",
    )
    output = await svc.model.generate(request)
    return JobResult(
        text=output.text,
        finish_reason=output.finish_reason,
        prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
        adapter=output.adapter,
        adapter_version=output.adapter_version,
        replica=output.replica,
        logprobs=output.logprobs,
        timings=Timings(
            generation_ms=round(output.generation_ms, 3),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
        ),
    )
