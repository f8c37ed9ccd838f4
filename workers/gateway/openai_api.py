"""OpenAI-compatible routes: ``model`` picks the adapter (or the base model).

Generation goes straight to LoRAModel, like ``/v1/generate``: no Redis on this path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from workers.engine.requests import GenerationRequest
from workers.gateway.errors import error_responses
from workers.gateway.openai_mapping import (
    ChatStream,
    CompletionStream,
    StreamFormat,
    chat_completion,
    chat_requests,
    completion,
    completion_requests,
)
from workers.gateway.openai_models import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingFields,
)
from workers.gateway.services import Services, ServicesDep
from workers.gateway.sse import sse_events, sse_response

router = APIRouter(prefix="/v1", tags=["openai"])
ERRORS = error_responses(400, 404, 413, 422)
# OpenAPI 3.1 reads the schema of an event stream as that of one event.
SSE_DOC: dict[str, Any] = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "One server-sent event: 'data' is a JSON chunk (the shape of the "
            "application/json body, with the new text), an error envelope, or [DONE] last.",
            "properties": {"data": {"type": "string"}},
            "required": ["data"],
        },
    }
}


@router.get("/models", response_model=ModelList, summary="The base model and every adapter")
async def list_models(svc: ServicesDep) -> ModelList:
    """The base model, then each registered adapter with ``parent`` set to the base model."""
    base = svc.settings.base_model_name
    created = int(time.time())
    cards = [ModelCard(id=base, created=created, root=base)]
    cards += [
        ModelCard(id=name, created=created, root=base, parent=base)
        for name in await svc.adapter_folders()
        if name != base
    ]
    return ModelList(data=cards)


@router.post(
    "/completions",
    response_model=Completion,
    responses={200: {"content": SSE_DOC}, **ERRORS},
    summary="Complete prompts (stream: true for server-sent events)",
)
async def create_completion(
    body: CompletionRequest, svc: ServicesDep
) -> Completion | StreamingResponse:
    """``n`` choices per prompt; ``stream: true`` sends each choice's text as it is made."""
    requests = completion_requests(
        body, svc.settings.base_model_name, max_new_tokens=svc.settings.max_new_tokens
    )
    if body.stream:
        return await _stream(svc, requests, CompletionStream(body.model), body)
    outputs = await asyncio.gather(*(svc.model.generate(request) for request in requests))
    return completion(body.model, outputs)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": SSE_DOC}, **ERRORS},
    summary="Answer a conversation (stream: true for server-sent events)",
)
async def create_chat_completion(
    body: ChatCompletionRequest, svc: ServicesDep
) -> ChatCompletion | StreamingResponse:
    """The assistant's replies (``n``), rendered through the adapter's chat template, or
    else the base model's."""
    requests = chat_requests(
        body, svc.settings.base_model_name, max_new_tokens=svc.settings.max_new_tokens
    )
    if body.stream:
        return await _stream(svc, requests, ChatStream(body.model), body)
    outputs = await asyncio.gather(*(svc.model.generate(request) for request in requests))
    return chat_completion(body.model, outputs)


async def _stream(
    svc: Services, requests: list[GenerationRequest], form: StreamFormat, body: SamplingFields
) -> StreamingResponse:
    """One event stream of every choice (each its own row, tagged with its index)."""
    # Opened before the response starts, so that a refusal still gets its status code.
    streams = await svc.model.open_streams(requests)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return sse_response(sse_events(form, streams, include_usage=include_usage))
