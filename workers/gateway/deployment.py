"""The gateway as a Serve deployment: the HTTP ingress of the loraq application."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from workers.gateway.app import create_app
from workers.gateway.batch_sweep import BatchSweep
from workers.gateway.model_client import ModelClient
from workers.gateway.services import Services
from workers.logs import configure_logging
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


@serve.ingress()
class Gateway:
    """FastAPI ingress: sync generation and the OpenAI API on ``model``, the queue on Redis.

    ``consumer`` is bound only so that the JobConsumer deployment belongs to the same
    application (Serve deploys what the ingress binds); ``None`` deploys no consumer.
    """

    def __init__(
        self,
        model: DeploymentHandle[Any],
        consumer: DeploymentHandle[Any] | None,
        settings: WorkerSettings,
    ) -> None:
        configure_logging(settings)
        client = ModelClient(
            model, affinity=settings.affinity_routing, replicas=settings.num_model_replicas
        )
        self.services = Services.create(settings, client)
        self.sweep = BatchSweep(self.services.batches)
        self.sweep.start()
        log.info(
            "gateway up: %d adapters registered, API keys %s",
            len(self.services.registry.names()),
            "on" if self.services.keys.enabled else "off",
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.services)

    async def __del__(self) -> None:
        await self.sweep.stop()
        await self.services.aclose()
