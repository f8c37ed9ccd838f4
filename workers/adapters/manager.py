"""Adapter lifecycle for async callers: resolve, validate, pin, load once, evict LRU.

The policy (:class:`AdapterCachePolicy`) decides; this class carries its plans out on the
model thread through ``run_on_model`` and keeps the policy consistent with what is
actually on the device. Policy state is guarded by a lock because pins are released
from the model thread when a row leaves the batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from schemas import ErrorType
from workers.adapters.cache import AdapterCachePolicy, LoadPlan
from workers.adapters.registry import AdapterRegistry
from workers.engine.requests import EngineError

log = logging.getLogger(__name__)

T = TypeVar("T")
RunOnModel = Callable[[Callable[[], T]], "concurrent.futures.Future[T]"]


class _Validate:
    """Step marker: validate the adapter folder, then ask again."""


_VALIDATE = _Validate()


class AdapterDevice(Protocol):
    """What the manager needs from the model side (called on the model thread)."""

    def add(self, name: str, folder: Path) -> None:
        """Load ``folder`` as adapter ``name``."""

    def remove(self, name: str) -> None:
        """Free adapter ``name``."""


class AdapterManager:
    """Pins adapters for requests, loading each cold adapter exactly once."""

    def __init__(
        self,
        *,
        registry: AdapterRegistry,
        policy: AdapterCachePolicy,
        validate: Callable[[Path], None],
        device: AdapterDevice,
        run_on_model: RunOnModel[None],
    ) -> None:
        self._registry = registry
        self._policy = policy
        self._validate = validate
        self._device = device
        self._run_on_model = run_on_model
        self._lock = threading.Lock()
        self._loads: dict[str, concurrent.futures.Future[None]] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.load_ms_total = 0.0
        # Called on the model thread with each successful load's seconds.
        self.on_load: Callable[[float], None] | None = None

    @property
    def policy(self) -> AdapterCachePolicy:
        """The cache policy (read its counters and state; mutate only through the manager)."""
        return self._policy

    def loaded(self) -> list[str]:
        """Adapters on the device, least recently used first."""
        with self._lock:
            return self._policy.loaded_names()

    async def acquire(self, name: str) -> None:
        """Pin ``name`` for one request, loading it first if it is cold.

        Raises ``unknown_adapter``, ``validation`` (bad name) or ``incompatible_adapter``.
        Waits while every slot is pinned by requests in flight.
        """
        folder = self._registry.resolve(name)
        validated = False
        while True:
            with self._lock:
                step = self._next_step(name, folder, validated=validated)
            if step is None:
                return
            if isinstance(step, concurrent.futures.Future):
                await _await_pinned(step, self, name)
                return
            if isinstance(step, _Validate):
                # Before anything is evicted for it: a bad adapter costs no good one.
                await asyncio.to_thread(self._validate, folder)
                validated = True
                continue
            await step

    def _next_step(
        self, name: str, folder: Path, *, validated: bool
    ) -> concurrent.futures.Future[None] | asyncio.Future[None] | _Validate | None:
        """Under the lock: pin a hit (``None``), join or start a load (its future),
        ask for validation (``_VALIDATE``), or wait for a free slot (a waiter)."""
        if self._policy.hit(name):
            return None
        pending = self._loads.get(name)
        if pending is not None:
            self._policy.pin(name)
            return pending
        if not validated:
            return _VALIDATE
        plan = self._policy.plan_load(name)
        if plan is None:
            return self._add_waiter()
        load = self._run_on_model(functools.partial(self._carry_out, plan, folder))
        self._loads[name] = load
        return load

    def release(self, name: str) -> None:
        """One request is done with ``name`` (any thread)."""
        with self._lock:
            self._policy.unpin(name)
        self._wake_waiters()

    def _carry_out(self, plan: LoadPlan, folder: Path) -> None:
        """Evict, then load (model thread); keeps the policy in step whatever happens."""
        started = time.perf_counter()
        try:
            for victim in plan.evict:
                self._device.remove(victim)
            self._device.add(plan.name, folder)
        except Exception as exc:
            log.warning("loading adapter %s from %s failed: %s", plan.name, folder, exc)
            with self._lock:
                self._policy.load_failed(plan.name)
                del self._loads[plan.name]
            self._wake_waiters()
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER, f"adapter {plan.name!r} failed to load: {exc}"
            ) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._policy.loaded(plan.name)
            del self._loads[plan.name]
            self.load_ms_total += elapsed_ms
        if self.on_load is not None:
            self.on_load(elapsed_ms / 1000)
        if plan.evict:
            log.info("evicted adapters %s to load %s", list(plan.evict), plan.name)
        log.debug("loaded adapter %s in %.1f ms", plan.name, elapsed_ms)

    def _add_waiter(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((loop, waiter))
        return waiter

    def _wake_waiters(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            # A closed loop raises: its caller is gone and waits no more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, waiter)


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
