"""What the routes use: the model client, the queue producer, the adapter registry, settings."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from producer.client import AsyncProducer
from producer.settings import ClientSettings
from workers.adapters.registrations import registered_locations
from workers.adapters.registry import CONFIG_FILE, AdapterRegistry
from workers.engine.requests import EngineError
from workers.errors import REDIS_DOWN
from workers.gateway.api_models import AdapterInfo
from workers.gateway.auth import ApiKeys
from workers.gateway.batches import BatchService
from workers.gateway.model_client import ModelClient
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a request handler may reach; one per gateway replica."""

    settings: WorkerSettings
    model: ModelClient
    producer: AsyncProducer
    registry: AdapterRegistry
    keys: ApiKeys
    batches: BatchService

    @classmethod
    def create(cls, settings: WorkerSettings, model: ModelClient) -> Services:
        """Services for ``settings``; the producer connects on first use."""
        producer = queue_producer(settings)
        return cls(
            settings=settings,
            model=model,
            producer=producer,
            registry=AdapterRegistry(settings.adapters, settings.adapter_dir),
            keys=ApiKeys(settings.api_keys, settings.admin_api_keys),
            batches=BatchService(settings, producer),
        )

    async def adapter_folders(self) -> dict[str, Path | None]:
        """Every adapter a request may name, with its folder (``None``: a remote one),
        sorted by name: the configured ones, then those registered at run time
        (``{P}:adapters``). Names served from ``LORAQ_ADAPTER_SOURCE`` are not listed: the
        source is not walked.

        Read afresh each time, so a removed registration leaves the list. With Redis
        unreachable, or a folder outside the roots, the list goes on without them
        (logged): listing must not fail because of one operator's entry.
        """
        folders: dict[str, Path | None] = {
            name: self.registry.resolve(name) for name in self.registry.names()
        }
        try:
            registered = await registered_locations(self.producer.client, self.producer.keys)
        except REDIS_DOWN as exc:
            log.warning("run-time adapter registrations not read: %r", exc)
            registered = {}
        for name, location in registered.items():
            if name in folders or self.registry.find(name) is not None:
                continue
            if "://" in location:
                folders[name] = None
                continue
            try:
                folders[name] = self.registry.check_folder(location)
            except EngineError as exc:
                log.warning("adapter %s: run-time registration refused: %s", name, exc.message)
        return dict(sorted(folders.items()))

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
    # Every client setting as the workers have it (the Redis mode included), but the
    # timeouts and retries.
    shared = settings.model_dump(include=set(ClientSettings.model_fields))
    return AsyncProducer.from_settings(
        ClientSettings(
            **{
                **shared,
                "connect_timeout_s": settings.http_redis_timeout_s,
                "socket_timeout_s": settings.http_redis_timeout_s,
                "connect_retries": 1,
            }
        )
    )


def adapter_info(name: str, folder: Path | None, loaded_on: list[str]) -> AdapterInfo:
    """Rank, alpha and targets of an adapter, from its ``adapter_config.json`` (unknown
    for a remote adapter: the gateway downloads nothing)."""
    try:
        config: Any = json.loads((folder / CONFIG_FILE).read_text()) if folder else {}
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
