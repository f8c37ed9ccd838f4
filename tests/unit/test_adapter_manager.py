"""The adapter manager's concurrency: one load per cold adapter, waits for a free slot.

A fake device stands in for the model and a fake read for the disk (this tests the
glue's logic, not PEFT); device loads run on one worker thread as they do in the engine,
reads on the host store's own loader thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from schemas import ErrorType
from workers.adapters.cache import AdapterCachePolicy
from workers.adapters.host_cache import HostCachePolicy
from workers.adapters.host_store import HostStore
from workers.adapters.host_weights import HostAdapter
from workers.adapters.manager import AdapterManager
from workers.adapters.resolved import ResolvedAdapter
from workers.engine.requests import EngineError

T = TypeVar("T")


class FakeDevice:
    def __init__(self, load_s: float = 0.05, broken: frozenset[str] = frozenset()) -> None:
        self.load_s = load_s
        self.broken = broken
        self.on_device: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def add(self, name: str, adapter: HostAdapter) -> None:
        self.calls.append(("add", name))
        time.sleep(self.load_s)
        if name in self.broken:
            raise RuntimeError("size mismatch")
        self.on_device.add(name)

    def remove(self, name: str) -> None:
        self.calls.append(("remove", name))
        self.on_device.discard(name)

    def is_stacked(self, name: str) -> bool:
        return True


@pytest.fixture
def model_thread() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield pool


class Named(ResolvedAdapter):
    """An adapter keyed by its bare name, so that the device's calls read as names."""

    @property
    def key(self) -> str:
        return self.name


def make(
    tmp_path: Path,
    pool: concurrent.futures.ThreadPoolExecutor,
    device: FakeDevice,
    capacity: int = 2,
    validate: Callable[[Path], None] = lambda folder: None,
) -> AdapterManager:
    for name in "abcde":
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "adapter_config.json").write_text("{}")

    def run_on_model(fn: Callable[[], T], label: str = "") -> concurrent.futures.Future[T]:
        return pool.submit(fn)

    def read(folder: Path) -> HostAdapter:
        validate(folder)
        return HostAdapter(folder=folder, stackable=True, modules={})

    return AdapterManager(
        policy=AdapterCachePolicy(capacity),
        host=HostStore(HostCachePolicy(2**20), read),
        device=device,
        run_on_model=run_on_model,
        in_batch=lambda name: False,
    )


async def test_concurrent_requests_for_a_cold_adapter_load_it_once(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    device = FakeDevice()
    manager = make(tmp_path, model_thread, device)
    await asyncio.gather(*[manager.acquire(Named("a", "v", tmp_path / "a")) for _ in range(8)])
    assert device.calls == [("add", "a")]
    assert manager.policy.pin_count("a") == 8
    for _ in range(8):
        manager.release("a")
    assert manager.policy.pin_count("a") == 0


async def test_a_pinned_adapter_stays_while_others_wait_for_a_slot(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    device = FakeDevice()
    manager = make(tmp_path, model_thread, device, capacity=1)
    await manager.acquire(Named("a", "v", tmp_path / "a"))
    waiting = asyncio.create_task(manager.acquire(Named("b", "v", tmp_path / "b")))
    await asyncio.sleep(0.2)
    assert not waiting.done() and device.on_device == {"a"}
    manager.release("a")
    await asyncio.wait_for(waiting, 5)
    assert device.on_device == {"b"}
    assert device.calls == [("add", "a"), ("remove", "a"), ("add", "b")]
    assert manager.policy.counters.evictions == 1


async def test_a_failed_load_fails_every_waiter_and_frees_the_slot(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    device = FakeDevice(broken=frozenset({"c"}))
    manager = make(tmp_path, model_thread, device, capacity=1)
    results = await asyncio.gather(
        *[manager.acquire(Named("c", "v", tmp_path / "c")) for _ in range(3)],
        return_exceptions=True,
    )
    assert all(
        isinstance(r, EngineError) and r.type is ErrorType.INCOMPATIBLE_ADAPTER for r in results
    )
    assert manager.policy.state("c") is None and manager.policy.pin_count("c") == 0
    await manager.acquire(Named("a", "v", tmp_path / "a"))
    assert manager.loaded() == ["a"]


async def test_validation_failure_evicts_nothing(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    def validate(folder: Path) -> None:
        if folder.name == "d":
            raise EngineError(ErrorType.INCOMPATIBLE_ADAPTER, "rank over max")

    device = FakeDevice()
    manager = make(tmp_path, model_thread, device, capacity=1, validate=validate)
    await manager.acquire(Named("a", "v", tmp_path / "a"))
    manager.release("a")
    with pytest.raises(EngineError):
        await manager.acquire(Named("d", "v", tmp_path / "d"))
    assert device.calls == [("add", "a")]


async def test_a_cancelled_waiter_leaves_no_pin_behind(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    device = FakeDevice(load_s=0.3)
    manager = make(tmp_path, model_thread, device)
    task = asyncio.create_task(manager.acquire(Named("a", "v", tmp_path / "a")))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)
    assert manager.loaded() == ["a"] and manager.policy.pin_count("a") == 0


async def test_release_from_another_thread_wakes_a_waiter(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    manager = make(tmp_path, model_thread, FakeDevice(load_s=0), capacity=1)
    await manager.acquire(Named("a", "v", tmp_path / "a"))
    waiting = asyncio.create_task(manager.acquire(Named("b", "v", tmp_path / "b")))
    await asyncio.sleep(0.05)
    threading.Thread(target=manager.release, args=("a",)).start()
    await asyncio.wait_for(waiting, 5)
    assert manager.loaded() == ["b"]


async def test_requests_waiting_for_a_slot_get_it_in_arrival_order_one_woken_at_a_time(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    manager = make(tmp_path, model_thread, FakeDevice(load_s=0), capacity=1)
    await manager.acquire(Named("a", "v", tmp_path / "a"))
    order: list[str] = []

    async def wait_for(name: str) -> None:
        await manager.acquire(Named(name, "v", tmp_path / name))
        order.append(name)

    tasks = []
    for name in "bcde":
        tasks.append(asyncio.create_task(wait_for(name)))
        await asyncio.sleep(0.02)  # each queues behind the one before
    assert [not task.done() for task in tasks] == [True] * 4
    head = manager._waiters[0].future
    manager.release("a")
    await asyncio.sleep(0.05)
    # One release wakes the head only; the others stay asleep in line.
    woken = sum(w.future.done() for w in manager._waiters)
    assert head.done() and woken == 0
    for name in "bcd":
        while name not in order:
            await asyncio.sleep(0.01)
        manager.release(name)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["b", "c", "d", "e"]


async def test_a_newcomer_waits_behind_the_line_even_when_a_slot_frees(
    tmp_path: Path, model_thread: concurrent.futures.ThreadPoolExecutor
) -> None:
    manager = make(tmp_path, model_thread, FakeDevice(load_s=0), capacity=1)
    await manager.acquire(Named("a", "v", tmp_path / "a"))
    first = asyncio.create_task(manager.acquire(Named("b", "v", tmp_path / "b")))
    await asyncio.sleep(0.05)
    manager.release("a")  # the head's slot: a request arriving now must not take it
    late = asyncio.create_task(manager.acquire(Named("c", "v", tmp_path / "c")))
    await asyncio.wait_for(first, 5)
    assert manager.loaded() == ["b"] and not late.done()
    manager.release("b")
    await asyncio.wait_for(late, 5)
    assert manager.loaded() == ["c"]
