"""The host tier: parsed adapters in CPU memory, read by one loader thread (never the model's).

:class:`HostCachePolicy` decides what stays; this class runs the reads and keeps the
tensors. Thread-safe: asyncio callers acquire and prefetch, the model thread releases
the pin a device copy held. Reads of requests go before reads of prefetches, so a
prefetch burst never delays a job whose row is waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers.adapters.host_cache import HostCachePolicy
from workers.adapters.host_weights import HostAdapter

log = logging.getLogger(__name__)

ReadAdapter = Callable[[Path], HostAdapter]
# Loader queue priorities: lower first.
URGENT, PREFETCH = 0, 1


@dataclass
class _Read:
    name: str
    folder: Path
    future: concurrent.futures.Future[HostAdapter]
    urgent: bool
    started: bool = False  # set by the loader; a read queued twice runs once


class HostStore:
    """Parsed adapters by name; an entry a caller holds is pinned until :meth:`release`."""

    def __init__(self, policy: HostCachePolicy, read: ReadAdapter) -> None:
        self._policy = policy
        self._read = read
        self._lock = threading.Lock()
        self._entries: dict[str, HostAdapter] = {}
        self._reads: dict[str, _Read] = {}  # under way or queued
        # (priority, sequence, read): FIFO within a priority; ``None`` stops the thread.
        self._queue: queue.PriorityQueue[tuple[int, int, _Read | None]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self.load_ms_total = 0.0
        # Called on the loader thread with each successful read's seconds.
        self.on_load: Callable[[float], None] | None = None
        self._thread = threading.Thread(target=self._run, name="loraq-adapter-loader", daemon=True)
        self._thread.start()

    @property
    def policy(self) -> HostCachePolicy:
        """The policy (read its counters; mutate only through the store)."""
        return self._policy

    def names(self) -> list[str]:
        """Adapters in host memory, least recently used first."""
        with self._lock:
            return self._policy.names()

    def holds(self, name: str) -> bool:
        """Whether ``name`` has an entry (loaded or loading)."""
        with self._lock:
            return self._policy.has(name)

    def bytes_used(self) -> int:
        """Bytes of the parsed adapters held."""
        with self._lock:
            return self._policy.bytes_used

    async def acquire(self, name: str, folder: Path, *, urgent: bool = True) -> HostAdapter:
        """``name`` parsed and pinned (read from ``folder`` first if cold).

        Raises what the read raises (``incompatible_adapter`` for a bad folder); the
        caller owns one pin once this returns, and gives it back with :meth:`release`.
        """
        with self._lock:
            if self._policy.hit(name):
                return self._entries[name]
            read = self._reads.get(name)
            if read is not None:
                self._policy.pin(name)
                if urgent and not read.urgent:
                    # A job now waits for what was a prefetch: queue it again, up front.
                    read.urgent = True
                    self._queue.put((URGENT, next(self._seq), read))
            else:
                self._policy.start_load(name)
                read = _Read(name, folder, concurrent.futures.Future(), urgent)
                self._reads[name] = read
                self._queue.put((URGENT if urgent else PREFETCH, next(self._seq), read))
        load = read.future
        try:
            return await asyncio.shield(asyncio.wrap_future(load))
        except asyncio.CancelledError:
            # The pin is ours whatever happens: give it back once the read is over.
            load.add_done_callback(
                lambda done: self.release(name) if not done.exception() else None
            )
            raise

    def release(self, name: str) -> None:
        """One holder is done with ``name`` (any thread)."""
        with self._lock:
            self._drop(self._policy.unpin(name))

    def discard(self, name: str) -> bool:
        """Free ``name`` now unless it is in use or loading; says whether it went."""
        with self._lock:
            dropped = self._policy.discard(name)
            if dropped:
                del self._entries[name]
            return dropped

    def close(self) -> None:
        """Stop the loader thread once the queued reads are done."""
        self._queue.put((PREFETCH + 1, next(self._seq), None))
        self._thread.join(5)

    def _drop(self, victims: tuple[str, ...]) -> None:
        for victim in victims:
            del self._entries[victim]
        if victims:
            log.debug("host tier evicted %s", list(victims))

    def _run(self) -> None:
        while True:
            _, _, item = self._queue.get()
            if item is None:
                return
            self._load(item)

    def _load(self, item: _Read) -> None:
        with self._lock:
            if item.started:
                return
            item.started = True
        started = time.perf_counter()
        try:
            adapter = self._read(item.folder)
        except BaseException as exc:  # handed to every asker through the future
            with self._lock:
                self._policy.load_failed(item.name)
                del self._reads[item.name]
            item.future.set_exception(exc)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._entries[item.name] = adapter
            del self._reads[item.name]
            self.load_ms_total += elapsed_ms
            self._drop(self._policy.loaded(item.name, adapter.size_bytes))
        if self.on_load is not None:
            self.on_load(elapsed_ms / 1000)
        log.debug("read adapter %s into host memory in %.1f ms", item.name, elapsed_ms)
        item.future.set_result(adapter)
