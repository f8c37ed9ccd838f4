"""Adapter lifecycle for async callers: read into host memory, pin, copy onto the device
once, evict LRU, free what is dropped (a version no longer current).

Adapters arrive resolved (:class:`ResolvedAdapter`: a key ``name@version`` and a local
folder); every tier is keyed by that key, so a new version never mixes with the old.

The policies (:class:`AdapterCachePolicy` for device slots, the host store's for host
memory) decide; this class carries their plans out (reads on the loader thread, copies
and loads on the model thread through ``run_on_model``) and keeps the device policy
consistent with what is actually on the device. Policy state is guarded by a lock
because pins are released from the model thread when a row leaves the batch.

This is the replica's admission step: requests whose adapter finds every slot pinned
wait here in one line, first come first served; a freed pin wakes the head of the line
only (it passes the turn on if it needs no slot after all), a newcomer never overtakes
it, and a prefetch never takes a slot a waiting request could use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from schemas import ErrorType
from workers.adapters.cache import AdapterCachePolicy, LoadPlan
from workers.adapters.host_store import HostStore
from workers.adapters.host_weights import HostAdapter
from workers.adapters.resolved import ResolvedAdapter
from workers.errors import EngineError

log = logging.getLogger(__name__)

T = TypeVar("T")
# Runs a function on the model thread between decode steps; the label names it there.
RunOnModel = Callable[[Callable[[], T], str], "concurrent.futures.Future[T]"]


class _NeedHost:
    """Step marker: bring the adapter into host memory (validated, parsed), then ask again."""


_NEED_HOST = _NeedHost()


@dataclass
class _Waiter:
    """A request's place in the line for a device slot (every slot pinned)."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass(frozen=True)
class _Started:
    """Step marker: this caller started the device load (and handed it its host pin)."""

    load: concurrent.futures.Future[None]


class AdapterDevice(Protocol):
    """What the manager needs from the model side (called on the model thread)."""

    def add(self, name: str, adapter: HostAdapter) -> None:
        """Put ``adapter`` on the device as ``name``."""

    def remove(self, name: str) -> None:
        """Free adapter ``name``."""

    def is_stacked(self, name: str) -> bool:
        """Whether ``name`` went into a stacked slot (a copy) rather than PEFT (a load)."""


@dataclass
class DeviceCounters:
    """Device-tier figures the policy does not keep."""

    copies: int = 0  # stacked: a copy of host tensors
    copy_ms_total: float = 0.0
    peft_loads: int = 0  # PEFT's load_adapter, which reads the folder on the model thread
    peft_load_ms_total: float = 0.0
    removals: int = 0  # adapters freed because their registration went
    # Adapters taken off the device while a row of the batch used them: must stay 0.
    in_use_evictions: int = 0


class AdapterManager:
    """Pins adapters for requests over two tiers: host memory, then a device slot.

    A cold adapter is read (and validated) by the host store's loader thread before
    anything is evicted for it; the model thread only copies it into a slot (or, for an
    adapter the stacked slots cannot hold, loads it through PEFT). A pin on the device
    implies one on the host until the copy is done.
    """

    def __init__(
        self,
        *,
        policy: AdapterCachePolicy,
        host: HostStore,
        device: AdapterDevice,
        run_on_model: RunOnModel[None],
        in_batch: Callable[[str], bool],
    ) -> None:
        self._policy = policy
        self._host = host
        self._device = device
        self._run_on_model = run_on_model
        self._in_batch = in_batch  # model thread: whether a row of the batch uses a name
        self._lock = threading.Lock()
        self._loads: dict[str, concurrent.futures.Future[None]] = {}
        # Requests waiting for a slot, oldest first: only the head is woken when a pin
        # goes, and a newcomer never passes it, so no request waits behind later ones.
        self._waiters: deque[_Waiter] = deque()
        self._removed: set[str] = set()  # dropped keys, freed once nothing uses them
        self.load_ms_total = 0.0
        self.device = DeviceCounters()
        # Called on the model thread with each successful load's seconds.
        self.on_load: Callable[[float], None] | None = None

    @property
    def policy(self) -> AdapterCachePolicy:
        """The cache policy (read its counters and state; mutate only through the manager)."""
        return self._policy

    @property
    def host(self) -> HostStore:
        """The host tier."""
        return self._host

    def loaded(self) -> list[str]:
        """Adapters on the device, least recently used first."""
        with self._lock:
            return self._policy.loaded_names()

    async def acquire(self, adapter: ResolvedAdapter) -> None:
        """Pin ``adapter.key`` for one request, loading it first if it is cold.

        Raises ``incompatible_adapter``. Waits while every slot is pinned by requests in
        flight, in line behind the requests that waited before it (first come, first
        served: the wait is bounded by the rows ahead, never by later arrivals).
        """
        name, folder = adapter.key, adapter.folder
        with self._lock:
            self._removed.discard(name)  # the same bytes are wanted again
        host: HostAdapter | None = None  # pinned on the host tier while this holds it
        waiter: _Waiter | None = None  # this request's place in the line, once it has one
        try:
            while True:
                with self._lock:
                    step = self._next_step(name, host, waiter)
                if step is None:
                    return
                if isinstance(step, _NeedHost):
                    # Before anything is evicted for it: a bad adapter costs no good one.
                    host = await self._host.acquire(name, folder)
                elif isinstance(step, _Started):
                    host = None  # the device load releases it
                    await _await_pinned(step.load, self, name)
                    return
                elif isinstance(step, concurrent.futures.Future):
                    await _await_pinned(step, self, name)
                    return
                else:
                    waiter = step
                    await step.future
        finally:
            if waiter is not None:
                with self._lock:
                    self._leave(waiter)  # no-op unless it was cancelled in line
            if host is not None:
                self._release_host(name)

    async def prefetch(self, adapter: ResolvedAdapter) -> None:
        """Warm ``adapter`` on the host tier, and copy it into a *free* device slot.

        Never evicts a device adapter; raises like :meth:`acquire` for a bad adapter.
        """
        name, folder = adapter.key, adapter.folder
        with self._lock:
            if self._policy.state(name) is not None:
                return
        host = await self._host.acquire(name, folder, urgent=False)
        load = None
        try:
            with self._lock:
                # Never a slot a waiting request could take.
                if host.stackable and self._policy.state(name) is None and not self._waiters:
                    plan = self._policy.plan_load(name, evict=False)
                    if plan is not None:
                        load = self._start_load(plan, host)  # it releases the host pin
        finally:
            if load is None:
                self._release_host(name)
        if load is not None:
            await _await_pinned(load, self, name)
            self.release(name)  # plan_load pinned it for us; no row needs it yet

    def remove(self, key: str) -> bool:
        """Free adapter ``key`` on both tiers as soon as nothing uses it (now, if nothing
        does); whether any tier held it."""
        with self._lock:
            held = self._policy.state(key) is not None or key in self._loads
            self._removed.add(key)
        held = self._host.holds(key) or held
        self._free_if_removed(key)
        return held

    def _next_step(
        self, name: str, host: HostAdapter | None, waiter: _Waiter | None
    ) -> concurrent.futures.Future[None] | _Waiter | _NeedHost | _Started | None:
        """Under the lock: pin a hit (``None``), join a load (its future), ask for the
        host tier (``_NEED_HOST``), start a load, or wait in line for a slot (a waiter:
        a newcomer at the back, a head that found no slot after all at the front)."""
        if self._policy.hit(name):
            self._leave(waiter)
            return None
        pending = self._loads.get(name)
        if pending is not None:
            self._policy.pin(name)
            self._leave(waiter)
            return pending
        if host is None:
            return _NEED_HOST
        if waiter is None and self._waiters:
            return self._queue()  # others wait for a slot first
        plan = self._policy.plan_load(name)
        if plan is None:
            return self._queue() if waiter is None else self._wait_again(waiter)
        self._leave(waiter)
        return _Started(self._start_load(plan, host))

    def _start_load(self, plan: LoadPlan, host: HostAdapter) -> concurrent.futures.Future[None]:
        """Under the lock: queue the device load of ``plan`` on the model thread."""
        label = "copy" if host.stackable else "peft_load"
        load = self._run_on_model(functools.partial(self._carry_out, plan, host), label)
        self._loads[plan.name] = load
        return load

    def release(self, name: str) -> None:
        """One request is done with ``name`` (any thread)."""
        with self._lock:
            self._policy.unpin(name)
            self._wake_head()
        self._free_if_removed(name)

    def _release_host(self, name: str) -> None:
        self._host.release(name)
        self._free_if_removed(name)

    def _carry_out(self, plan: LoadPlan, host: HostAdapter) -> None:
        """Evict, then copy or load (model thread); keeps the policy in step whatever happens."""
        started = time.perf_counter()
        try:
            for victim in plan.evict:
                self._take_off(victim)
            self._device.add(plan.name, host)
        except Exception as exc:
            log.warning("loading adapter %s from %s failed: %s", plan.name, host.folder, exc)
            with self._lock:
                self._policy.load_failed(plan.name)
                del self._loads[plan.name]
                self._wake_head()
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER, f"adapter {plan.name!r} failed to load: {exc}"
            ) from exc
        finally:
            self._release_host(plan.name)  # the copy is done (or failed): the host may evict
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._policy.loaded(plan.name)
            del self._loads[plan.name]
            self.load_ms_total += elapsed_ms
            self._count_load(plan.name, elapsed_ms)
        if self.on_load is not None:
            self.on_load(elapsed_ms / 1000)
        if plan.evict:
            log.info("evicted adapters %s to load %s", list(plan.evict), plan.name)
        log.debug("loaded adapter %s in %.1f ms", plan.name, elapsed_ms)

    def _count_load(self, name: str, elapsed_ms: float) -> None:
        if self._device.is_stacked(name):
            self.device.copies += 1
            self.device.copy_ms_total += elapsed_ms
        else:
            self.device.peft_loads += 1
            self.device.peft_load_ms_total += elapsed_ms

    def _take_off(self, name: str) -> None:
        """Model thread: delete ``name`` from the device (its slot is already given up)."""
        if self._in_batch(name):
            self.device.in_use_evictions += 1
            log.error("adapter %s left the device while a row used it", name)
        self._device.remove(name)

    def _free_if_removed(self, name: str) -> None:
        """Free a removed adapter on the tiers where nothing holds it any more."""
        with self._lock:
            if name not in self._removed:
                return
            if self._policy.remove(name):
                self.device.removals += 1
                self._run_on_model(functools.partial(self._take_off, name), "remove")
            self._host.discard(name)
            if self._policy.state(name) is None and not self._host.holds(name):
                self._removed.discard(name)

    def _queue(self) -> _Waiter:
        """Under the lock: a new place at the back of the line."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, loop.create_future())
        self._waiters.append(waiter)
        return waiter

    def _wait_again(self, waiter: _Waiter) -> _Waiter:
        """Under the lock: the head was woken but found no slot: it keeps its place."""
        waiter.future = waiter.loop.create_future()
        return waiter

    def _leave(self, waiter: _Waiter | None) -> None:
        """Under the lock: ``waiter`` leaves the line; the next head checks for a slot."""
        if waiter is not None and waiter in self._waiters:
            self._waiters.remove(waiter)
            self._wake_head()

    def _wake_head(self) -> None:
        """Under the lock: wake the request first in line (only it: no stampede)."""
        if not self._waiters:
            return
        head = self._waiters[0]
        if not head.future.done():
            # A closed loop raises: its caller is gone and waits no more.
            with contextlib.suppress(RuntimeError):
                head.loop.call_soon_threadsafe(_resolve, head.future)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _await_pinned(
    load: concurrent.futures.Future[None], manager: AdapterManager, name: str
) -> None:
    """Wait for ``load``, holding a pin on ``name`` that the caller owns once it succeeds.

    If the caller is cancelled meanwhile, the pin is released when the load succeeds (a
    failed load drops every pin on its own).
    """
    try:
        await asyncio.shield(asyncio.wrap_future(load))
    except asyncio.CancelledError:
        load.add_done_callback(
            lambda done: manager.release(name) if done.exception() is None else None
        )
        raise
