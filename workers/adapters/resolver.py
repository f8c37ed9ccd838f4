"""Names to local folders a backend can read: the catalogue, the object store, the disk tier.

A model replica asks :meth:`AdapterResolver.use` for each request's adapter and hands the
:class:`ResolvedAdapter` to its backend, which never sees a name it has to look up. A
resolution is kept for ``sync_s``: a registration re-pointed (or a new object under the
same URI) is seen by every job that starts later than that. Remote folders are listed
and downloaded on a bounded pool of download threads (never the loader thread or the
model thread), with the store's timeouts and retries with backoff here; a store that
stays unreachable is an ``adapter_unavailable`` error, which the queue retries until the
job's attempts or deadline run out. A listing is shared by the node's replicas
(:mod:`workers.adapters.node_listings`): a name is revalidated once per node per
``sync_s`` (a ``HEAD`` of each file already known, and a full listing once the last is
``relist_s`` old or when a file changed), and a resolution expires ``sync_s`` after the
store was asked, whichever replica asked. A name the source does not have is remembered
for ``miss_ttl_s``, so a flood of bad names does not reach the store. Both memories are
bounded (least recently used out).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from schemas import ErrorType
from schemas.adapter_uris import AdapterUri
from schemas.replicas import DiskTierCounters
from workers.adapters.catalogue import AdapterCatalogue, Location
from workers.adapters.disk_cache import DiskCache, DiskLease, entry_key
from workers.adapters.node_listings import NodeListings
from workers.adapters.registry import not_registered
from workers.adapters.remote import Fetched, RemoteFolder, RemoteStore, StoreUnreachable
from workers.adapters.resolved import ResolvedAdapter, local_version
from workers.errors import EngineError

__all__ = ["AdapterResolver", "ResolvedAdapter", "RetryPolicy"]

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
# Names whose resolution (or miss) a replica remembers; the least recently used beyond
# this are looked up again (from the node's listings) when next used.
REMEMBERED = 8192


@dataclass(frozen=True)
class _Resolution:
    adapter: ResolvedAdapter
    remote: RemoteFolder | None
    expires: float


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long the store is retried within one resolution."""

    attempts: int = 3
    backoff_s: float = 0.5


class AdapterResolver:
    """Resolves names for one replica; the disk tier is shared with the node's others."""

    def __init__(
        self,
        catalogue: AdapterCatalogue,
        *,
        store: RemoteStore | None,
        disk: DiskCache | None,
        sync_s: float,
        miss_ttl_s: float,
        max_downloads: int,
        retry: RetryPolicy | None = None,
        relist_s: float = 0.0,
    ) -> None:
        self._catalogue = catalogue
        self._store = store
        self._disk = disk
        self._sync_s = sync_s
        self._relist_s = relist_s
        self._miss_ttl_s = miss_ttl_s
        self._retry = retry or RetryPolicy()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_downloads, "loraq-download")
        self._listings = NodeListings(disk.root) if disk is not None else None
        self._resolved: OrderedDict[str, _Resolution] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()  # name -> until when missing
        self._pending: dict[str, asyncio.Future[_Resolution]] = {}

    @property
    def catalogue(self) -> AdapterCatalogue:
        """Where names are looked up."""
        return self._catalogue

    def disk_stats(self) -> DiskTierCounters:
        """A copy of the disk tier's counters (zeros without one)."""
        return self._disk.stats.model_copy() if self._disk else DiskTierCounters()

    async def resolve(self, name: str) -> ResolvedAdapter:
        """The current version of ``name`` (looked up again when its listing is older
        than ``sync_s``). Downloads nothing."""
        return (await self._resolution(name, fetch=False)).adapter

    def known(self, name: str) -> ResolvedAdapter | None:
        """The version of ``name`` this replica resolved last, however old (no I/O)."""
        known = self._resolved.get(name)
        return known.adapter if known is not None else None

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[ResolvedAdapter]:
        """``name`` resolved (the store asked again when it last vouched for the version
        more than ``sync_s`` ago) and its folder on this node's disk, held there (not
        evicted) until the block ends. A prefetch uses it as a job does: a hint for a
        waiting job revalidates its adapter ahead of it, so the job, starting within
        ``sync_s`` of that, does not wait for the store."""
        resolution = await self._resolution(name, fetch=True)
        lease = await self._hold(resolution) if resolution.remote else None
        try:
            yield resolution.adapter
        finally:
            if lease is not None:
                lease.close()

    def forget(self, adapter: ResolvedAdapter) -> None:
        """``adapter`` is no longer current: delete its disk entry if nobody holds it."""
        if self._disk is not None and self._disk.root in adapter.folder.parents:
            self._pool.submit(self._disk.discard, adapter.folder.name)

    def close(self) -> None:
        """Stop the download threads (downloads under way finish)."""
        self._pool.shutdown(wait=False)

    async def _resolution(self, name: str, *, fetch: bool) -> _Resolution:
        """``name``'s resolution, looked up again past ``sync_s``; ``fetch``: a look-up
        started here may bring the files too (see :meth:`_ask_store`)."""
        now = time.monotonic()
        known = self._resolved.get(name)
        if known is not None and known.expires > now:
            self._resolved.move_to_end(name)
            return known
        if self._misses.get(name, 0.0) > now:
            raise not_registered(name)
        pending = self._pending.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._look_up(name, fetch))
            self._pending[name] = pending
            pending.add_done_callback(lambda _: self._pending.pop(name, None))
        try:
            return await asyncio.shield(pending)
        except EngineError as exc:
            if exc.type is not ErrorType.ADAPTER_UNAVAILABLE or known is None:
                raise
        # The store is down: the version this replica knows goes on serving (its files
        # are on this node's disk, or fetched again if the store comes back).
        log.info("adapter %s: store unreachable; serving the version known", name)
        return known

    async def _look_up(self, name: str, fetch: bool) -> _Resolution:
        try:
            location = await self._catalogue.locate(name)
            remote, expires = (
                await self._list(location, fetch)
                if location.uri is not None
                else (None, time.monotonic() + self._sync_s)
            )
        except EngineError as exc:
            if exc.type is ErrorType.UNKNOWN_ADAPTER and name in self._resolved:
                self.forget(self._resolved.pop(name).adapter)  # unregistered
            raise
        if location.folder is not None:
            folder = location.folder
            version = await asyncio.to_thread(local_version, folder)
        else:
            assert remote is not None and self._disk is not None
            version = remote.version
            folder = self._disk.root / "entries" / entry_key(str(remote.uri), version)
        adapter = ResolvedAdapter(name, version, folder)
        resolution = _Resolution(adapter, remote, expires)
        old = self._resolved.get(name)
        if old is not None and old.adapter.key != adapter.key:
            self.forget(old.adapter)  # the old bytes leave the disk tier once unheld
        _remember(self._resolved, name, resolution)
        return resolution

    async def _list(self, location: Location, fetch: bool) -> tuple[RemoteFolder, float]:
        """The folder as the store last vouched for it (to this replica or another of the
        node's, within ``sync_s``: listed, or each file's ``HEAD`` unchanged) and when, on
        the monotonic clock, that expires here."""
        assert location.uri is not None
        if self._store is None or self._listings is None:
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER,
                f"adapter {location.name!r} is remote and this worker has no disk cache",
            )
        store, listings, uri = self._store, self._listings, location.uri
        listing = await self._with_retries(
            location.name,
            lambda: listings.get(
                uri,
                self._sync_s,
                lambda first: self._ask_store(uri, fetch=first and fetch),
                unchanged=store.unchanged,
                relist_s=self._relist_s,
            ),
        )
        if listing is None:
            _remember(self._misses, location.name, time.monotonic() + self._miss_ttl_s)
            raise not_registered(location.name)
        # Trusted for sync_s from when the store was asked, not from now.
        left = listing.checked_at + self._sync_s - time.time()
        return listing.folder, time.monotonic() + max(0.0, left)

    def _ask_store(self, uri: AdapterUri, *, fetch: bool) -> RemoteFolder | None:
        """The store's look-up of ``uri``. With ``fetch`` (the node's first look-up, for a
        use) the files come in the same requests where the store allows it
        (:meth:`RemoteStore.fetch_folder`) and go into the disk tier before the listing
        is published: a never-seen adapter costs one round of requests, not a look-up
        and then a download."""
        store, disk = self._store, self._disk
        assert store is not None and disk is not None
        if not fetch:
            return store.list_folder(uri)
        with disk.staging() as staging:
            started = time.perf_counter()
            folder, fetched = store.fetch_folder(uri, staging)
            if folder is not None and fetched:
                key = entry_key(str(uri), folder.version)
                spent = time.perf_counter() - started
                disk.put(
                    key, str(uri), folder.size_bytes, _mover(staging, fetched), fetched_s=spent
                )
        return folder

    async def _hold(self, resolution: _Resolution) -> DiskLease:
        disk, store, remote = self._disk, self._store, resolution.remote
        assert disk is not None and store is not None and remote is not None
        key = resolution.adapter.folder.name
        lease = await asyncio.get_running_loop().run_in_executor(self._pool, disk.lease, key)
        if lease is not None:
            return lease

        def fetch() -> DiskLease:
            return disk.fetch(key, str(remote.uri), remote.size_bytes, _writer(store, remote))

        try:
            return await self._with_retries(resolution.adapter.name, fetch)
        except EngineError:
            disk.stats.download_failures += 1
            raise

    async def _with_retries(self, name: str, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        for attempt in range(self._retry.attempts):
            try:
                return await loop.run_in_executor(self._pool, call)
            except StoreUnreachable as exc:
                problem = str(exc)
                log.warning(
                    "adapter %s: store unreachable (attempt %d): %s", name, attempt + 1, exc
                )
            if attempt + 1 < self._retry.attempts:
                await asyncio.sleep(self._retry.backoff_s * 2**attempt)
        raise EngineError(
            ErrorType.ADAPTER_UNAVAILABLE,
            f"adapter {name!r} could not be fetched: its store is unreachable ({problem}); "
            "the job is retried",
        )


def _remember(memory: OrderedDict[K, V], key: K, value: V) -> None:
    """``memory[key] = value``, the least recently used entry out past ``REMEMBERED``."""
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > REMEMBERED:
        memory.popitem(last=False)


def _writer(store: RemoteStore, remote: RemoteFolder) -> Callable[[Path], dict[str, str]]:
    return lambda dest: store.download(remote, dest)


def _mover(staging: Path, fetched: Fetched) -> Callable[[Path], dict[str, str]]:
    """A disk-tier writer that moves files already fetched into ``staging`` in place."""

    def move(dest: Path) -> dict[str, str]:
        for name in fetched:
            os.rename(staging / name, dest / name)
        return dict(fetched)

    return move
