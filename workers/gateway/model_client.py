"""How the gateway reaches LoRAModel: through its Serve handle, never through Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from schemas.replicas import ReplicaStats
from workers.engine.requests import GenerationOutput, GenerationRequest, TextDelta
from workers.gateway.errors import engine_errors
from workers.serve.replicas import replica_stats

Update = TextDelta | GenerationOutput


class ModelClient:
    """Sync and streamed generation on LoRAModel, the adapter as multiplexed model id.

    Failures the request caused arrive as :class:`~workers.gateway.errors.ApiError`.
    """

    def __init__(
        self, handle: DeploymentHandle[Any], *, affinity: bool = True, replicas: int = 1
    ) -> None:
        self._handle = handle
        self._affinity = affinity
        self._replicas = replicas

    def _handle_for(self, request: GenerationRequest) -> DeploymentHandle[Any]:
        # By value over Serve's gRPC, like the consumer's calls: no object store.
        handle = self._handle.options(_by_reference=False)
        if self._affinity and request.adapter:
            return handle.options(multiplexed_model_id=request.adapter)
        return handle

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        """The finished generation of ``request``."""
        with engine_errors():
            output: GenerationOutput = await self._handle_for(request).generate.remote(request)
        return output

    async def open_streams(
        self, requests: Sequence[GenerationRequest]
    ) -> list[AsyncGenerator[Update, None]]:
        """Per request, its text chunks, then its output; the requests run side by side.

        The first item of each has already arrived when this returns, so that a refused
        request (unknown adapter, prompt too long) fails here, before an HTTP response has
        begun; the others are then stopped.
        """
        opened = await asyncio.gather(
            *(self._open(request) for request in requests), return_exceptions=True
        )
        started = [item for item in opened if not isinstance(item, BaseException)]
        failed = [item for item in opened if isinstance(item, BaseException)]
        if failed:
            for _, stream in started:
                await stream.aclose()
            raise failed[0]
        return [_prepend(first, stream) for first, stream in started]

    async def _open(
        self, request: GenerationRequest
    ) -> tuple[Update, AsyncGenerator[Update, None]]:
        stream = self._stream(request)
        try:
            with engine_errors():
                first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        return first, stream

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[Update, None]:
        """One streaming call per HTTP request (the consumer groups its jobs' calls; an HTTP
        client waits for its own)."""
        handle = self._handle_for(request).options(stream=True)
        response: DeploymentResponseGenerator[Any] = handle.stream.remote(request)  # type: ignore[assignment]
        finished = False
        try:
            async for item in response:
                yield item
            finished = True
        finally:
            if not finished:
                # Stops the generation on the replica when the HTTP client goes away.
                response.cancel()  # type: ignore[no-untyped-call]

    async def ping(self, timeout_s: float) -> str:
        """The id of a replica that answered within ``timeout_s`` (it has its model loaded:
        Serve routes only to replicas whose constructor finished)."""
        stats = await asyncio.wait_for(self._handle.stats.remote(), timeout_s)
        return ReplicaStats.model_validate(stats).replica

    async def replica_stats(self, timeout_s: float) -> dict[str, ReplicaStats]:
        """``stats()`` of every model replica, by replica id."""
        found = await asyncio.wait_for(replica_stats(self._handle, self._replicas), timeout_s)
        return {replica: ReplicaStats.model_validate(stats) for replica, stats in found.items()}


async def _prepend(
    first: Update, rest: AsyncGenerator[Update, None]
) -> AsyncGenerator[Update, None]:
    try:
        yield first
        with engine_errors():
            async for item in rest:
                yield item
    finally:
        await rest.aclose()
