"""How a consumer reaches the LoRAModel deployment: a streaming handle call per job, and
prefetch hints to the replica the scheduler will send an adapter's jobs to."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from workers.engine.requests import GenerationOutput, GenerationRequest, TextDelta


class ServeDispatcher:
    """Sends each request to LoRAModel, the adapter as Serve's multiplexed model id.

    The model id is what lets Serve's router prefer a replica that has the adapter warm;
    base-model requests carry none and are balanced over all replicas. With
    ``affinity=False`` no request carries one (the baseline the affinity test compares).
    """

    def __init__(self, handle: DeploymentHandle[Any], *, affinity: bool = True) -> None:
        self.handle = handle
        self.affinity = affinity

    def _handle_for(self, request: GenerationRequest) -> DeploymentHandle[Any]:
        # By value over Serve's inter-deployment gRPC rather than through the object store:
        # each streamed chunk is then a message, not an object, which on two cores lifted
        # the queue path from 0.6 to 0.8 of the direct handle's throughput (bench/queue.py).
        handle = self.handle.options(stream=True, _by_reference=False)
        if self.affinity and request.adapter:
            return handle.options(multiplexed_model_id=request.adapter)
        return handle

    async def prefetch(self, replica: str, adapters: list[str]) -> None:
        """Ask ``replica`` to warm ``adapters`` (routed there by ``target_replica``)."""
        await self.handle.options(_by_reference=False).prefetch.remote(
            adapters, target_replica=replica
        )

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[TextDelta | GenerationOutput, None]:
        """Text chunks while ``request`` generates, then its output."""
        response: DeploymentResponseGenerator[Any] = self._handle_for(request).stream.remote(
            request
        )  # type: ignore[assignment]
        finished = False
        try:
            async for item in response:
                yield item
            finished = True
        finally:
            if not finished:
                # Stops the generation on the replica when this job is cancelled.
                response.cancel()  # type: ignore[no-untyped-call]
