"""A backend driven as a model replica drives it, for the tests that use one directly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from workers.adapters.catalogue import AdapterCatalogue
from workers.adapters.resolved import ResolvedAdapter, name_of
from workers.adapters.resolver import AdapterResolver
from workers.engine.requests import GenerationOutput, GenerationRequest
from workers.serve.replica_adapters import ReplicaAdapters
from workers.settings import WorkerSettings


class Resolving:
    """A backend behind the real adapter resolver, as a model replica drives it
    (:class:`ReplicaAdapters`): names are resolved (and held) above the backend, which
    gets :class:`ResolvedAdapter`s. Everything else is the backend's own; adapter lists
    come back as names.
    """

    def __init__(self, backend: Any, settings: WorkerSettings) -> None:
        self.backend = backend
        self.resolver = AdapterResolver(
            AdapterCatalogue.of(settings.adapters, settings.adapter_dir),
            store=None,
            disk=None,
            sync_s=settings.registry_sync_s,
            miss_ttl_s=0.0,
            max_downloads=1,
        )
        self.adapters = ReplicaAdapters(self.resolver, backend)

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        if not request.adapter:
            return await self.backend.generate(request)  # type: ignore[no-any-return]
        async with self.adapters.use(request.adapter) as adapter:
            request.resolved = adapter
            return await self.backend.generate(request)  # type: ignore[no-any-return]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            if request.adapter:
                request.resolved = await stack.enter_async_context(
                    self.adapters.use(request.adapter)
                )
            # Closed with this one: a caller that stops reading stops the backend's row.
            inner = await stack.enter_async_context(
                contextlib.aclosing(self.backend.stream(request))
            )
            async for item in inner:
                yield item

    async def ensure_adapter(self, name: str) -> None:
        async with self.adapters.use(name) as adapter:
            await self.backend.ensure_adapter(adapter)

    async def prefetch(self, names: list[str]) -> None:
        self.adapters.prefetch(names)

    async def resolve(self, name: str) -> ResolvedAdapter:
        return await self.resolver.resolve(name)

    def loaded_adapters(self) -> list[str]:
        return [name_of(key) for key in self.backend.loaded_adapters()]

    def host_adapters(self) -> list[str]:
        return [name_of(key) for key in self.backend.host_adapters()]

    async def close(self) -> None:
        self.resolver.close()
        await self.backend.close()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.backend, attribute)
