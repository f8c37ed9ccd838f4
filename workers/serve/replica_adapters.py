"""A model replica's adapters: names resolved above the backend, kept current, prefetched.

The catalogue and the tiers below the backend (object store, the node's disk cache) are
reached through :class:`AdapterResolver`; the backend gets :class:`ResolvedAdapter`
values only. Every ``sync_s`` the versions the backend holds are checked against the
catalogue: a version that is no longer current (re-pointed, re-uploaded, unregistered)
is dropped from the host and device tiers (rows running on it finish first) and from the
node's disk tier when no replica holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from schemas import ErrorType, Keys
from workers.adapters.catalogue import AdapterCatalogue
from workers.adapters.disk_cache import DiskCache
from workers.adapters.registrations import registration
from workers.adapters.remote import RemoteStore
from workers.adapters.resolved import ResolvedAdapter, name_of
from workers.adapters.resolver import AdapterResolver, RetryPolicy
from workers.engine.backend import Backend
from workers.errors import REDIS_DOWN, EngineError
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


def resolver_of(settings: WorkerSettings, client: aioredis.Redis, keys: Keys) -> AdapterResolver:
    """The resolver of a replica: the settings' catalogue, ``{P}:adapters`` at run time,
    the object store and the node's disk tier."""
    catalogue = AdapterCatalogue.of(
        settings.adapters,
        settings.adapter_dir,
        source=settings.adapter_source,
        registrations=functools.partial(registration, client, keys),
    )
    return AdapterResolver(
        catalogue,
        store=RemoteStore(
            timeout_s=settings.adapter_download_timeout_s,
            max_bytes=settings.max_adapter_mb * 2**20,
        ),
        disk=DiskCache(
            Path(settings.adapter_disk_cache_dir).expanduser(),
            budget_bytes=settings.adapter_disk_cache_mb * 2**20,
        ),
        sync_s=settings.registry_sync_s,
        relist_s=settings.adapter_relist_s,
        miss_ttl_s=settings.adapter_miss_ttl_s,
        max_downloads=settings.adapter_download_concurrency,
        retry=RetryPolicy(attempts=settings.adapter_download_attempts),
    )


class ReplicaAdapters:
    """Resolution, prefetch and version sync of one replica's adapters."""

    def __init__(self, resolver: AdapterResolver, backend: Backend) -> None:
        self.resolver = resolver
        self._backend = backend
        self._prefetches: dict[str, asyncio.Task[None]] = {}  # by name, kept alive

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[ResolvedAdapter]:
        """``name`` resolved, its files on this node and held there for the block."""
        async with self.resolver.use(name) as adapter:
            yield adapter

    def prefetch(self, names: list[str]) -> None:
        """Fetch these adapters to the disk tier and warm them on the backend, in the
        background; bad or unknown names are skipped (logged at DEBUG)."""
        for name in dict.fromkeys(names):
            if name not in self._prefetches:
                task = asyncio.ensure_future(self._prefetch_one(name))
                self._prefetches[name] = task
                task.add_done_callback(functools.partial(self._prefetched, name))

    def _prefetched(self, name: str, _: asyncio.Task[None]) -> None:
        self._prefetches.pop(name, None)

    async def sync(self) -> None:
        """Drop the versions the backend holds that are no longer current.

        The adapters on the device are resolved again (the store is asked only when the
        node's listing is older than ``sync_s``); one held in host memory alone is
        compared with what this replica resolved last, with no call to the store: its
        next use resolves it again, and the sync after that drops the old version. So
        the store sees one listing per adapter in use per node per ``sync_s``, not one
        per adapter held, and an old version leaves the tiers within two periods.
        """
        device = {name_of(key) for key in self._backend.loaded_adapters()}
        held: dict[str, list[str]] = {}
        for key in {*self._backend.loaded_adapters(), *self._backend.host_adapters()}:
            held.setdefault(name_of(key), []).append(key)
        for name, keys in held.items():
            current: str | None
            if name in device:
                try:
                    current = (await self.resolver.resolve(name)).key
                except EngineError as exc:
                    if exc.type not in (ErrorType.UNKNOWN_ADAPTER, ErrorType.VALIDATION):
                        continue  # the store cannot say now: keep what is held
                    current = None
                except REDIS_DOWN:
                    continue
            else:
                known = self.resolver.known(name)
                if known is None:
                    continue  # nothing to compare with until its next use
                current = known.key
            for key in keys:
                if key != current and self._backend.drop_adapter(key):
                    log.info("adapter %s: version %s is no longer current", name, key)

    async def _prefetch_one(self, name: str) -> None:
        try:
            # Revalidated here when its check is past the sync bound, so that the job it
            # is for, starting within the bound, does not wait for the store.
            async with self.resolver.use(name) as adapter:
                await self._backend.prefetch(adapter)
        except Exception as exc:  # a hint, not a request: nobody waits for its error
            log.debug("prefetch of adapter %r skipped: %s", name, exc)
