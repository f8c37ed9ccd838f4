"""What the routes use: the model client, the queue producer, the adapter registry, settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from producer.client import AsyncProducer
from producer.settings import ClientSettings
from workers.adapters.registry import CONFIG_FILE, AdapterRegistry
from workers.gateway.api_models import AdapterInfo
from workers.gateway.auth import ApiKeys
from workers.gateway.model_client import ModelClient
from workers.settings import WorkerSettings


@dataclass
class Services:
    """Everything a request handler may reach; one per gateway replica."""

    settings: WorkerSettings
    model: ModelClient
    producer: AsyncProducer
    registry: AdapterRegistry
    keys: ApiKeys

    @classmethod
    def create(cls, settings: WorkerSettings, model: ModelClient) -> Services:
        """Services for ``settings``; the producer connects on first use."""
        return cls(
            settings=settings,
            model=model,
            producer=queue_producer(settings),
            registry=AdapterRegistry(settings.adapters, settings.adapter_dir),
            keys=ApiKeys(settings.api_keys),
        )

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self.producer.aclose()


def services(request: Request) -> Services:
    """Route dependency: the services of the app serving ``request``."""
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


def queue_producer(settings: WorkerSettings) -> AsyncProducer:
    """A producer with short timeouts and one retry: with Redis down, a queue endpoint
    answers 503 within about ``2 * http_redis_timeout_s`` instead of hanging."""
    return AsyncProducer.from_settings(
        ClientSettings(
            redis_url=settings.effective_redis_url,
            prefix=settings.prefix,
            job_ttl_s=settings.job_ttl_s,
            result_ttl_s=settings.result_ttl_s,
            connect_timeout_s=settings.http_redis_timeout_s,
            socket_timeout_s=settings.http_redis_timeout_s,
            connect_retries=1,
        )
    )


def adapter_info(name: str, folder: Path, loaded_on: list[str]) -> AdapterInfo:
    """Rank, alpha and targets of an adapter, from its ``adapter_config.json``."""
    try:
        config: Any = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    targets = config.get("target_modules") or []
    rank, alpha = config.get("r"), config.get("lora_alpha")
    return AdapterInfo(
        name=name,
        rank=rank if isinstance(rank, int) else None,
        alpha=alpha if isinstance(alpha, int | float) else None,
        target_modules=[targets] if isinstance(targets, str) else sorted(map(str, targets)),
        loaded_on=loaded_on,
    )
