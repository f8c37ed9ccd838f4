"""The vLLM backend's tests: real vLLM (its CPU build), the demo kit, no mocks.

vLLM is optional: without it every test here is skipped. vLLM runs as a user who set
none of its variables would run it (they are removed before Ray starts, so that the served
app's replicas inherit that too): its KV cache is loraq's ``LORAQ_VLLM_KV_CACHE_GB``, its
OpenMP threads vLLM's own choice (on two cores: one thread, the other core for its
scheduler).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.resolving import Resolving
from workers.engine.vllm_backend import VllmBackend
from workers.settings import DEMO_DIR, WorkerSettings

pytest.importorskip("vllm")

# Without loraq's KV cache size, vLLM's CPU build asked for 92 % of the node's memory and
# never started on these machines unless VLLM_CPU_KVCACHE_SPACE was set.
for _name in [name for name in os.environ if name.startswith("VLLM_")]:
    del os.environ[_name]

T = TypeVar("T")


class LoopThread:
    """One event loop on a thread of its own for a whole module: the vLLM backend binds to
    the loop (and its engine core to the thread) it is built on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 240.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def bad_adapters(root: Path) -> Path:
    """The demo adapters plus two the base cannot use, in one scanned folder."""
    folder = root / "adapters"
    shutil.copytree(DEMO_DIR / "adapters", folder)
    for name, change in {
        "no-such-module": ("target_modules", ["wq_proj"]),
        "too-big": ("r", 128),
    }.items():
        shutil.copytree(DEMO_DIR / "adapters" / "upper", folder / name)
        config = folder / name / "adapter_config.json"
        values = json.loads(config.read_text())
        values[change[0]] = change[1]
        config.write_text(json.dumps(values))
    return folder


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def backend(
    loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmBackend]:
    """One vLLM backend per module on the demo kit, room for every adapter in a batch."""
    settings = WorkerSettings(
        engine="vllm",
        adapter_dir=str(bad_adapters(tmp_path_factory.mktemp("vllm-kit"))),
        adapters={},
        max_adapters_per_replica=4,
        max_lora_rank=16,
        max_batch_size=64,
        max_input_tokens=64,
        max_new_tokens=48,
        # As the HF engine runs the demo model: vLLM's "auto" casts float32 to bfloat16.
        dtype="float32",
    )

    async def start() -> VllmBackend:
        # Names resolved above the backend, as a model replica does.
        return Resolving(VllmBackend.from_settings(settings), settings)  # type: ignore[return-value]

    # vLLM's start (its engine-core and worker processes each import torch and vLLM) took
    # 4-6 minutes on two cores shared with other test runs.
    backend = loop_thread.run(start(), timeout_s=600.0)
    yield backend
    loop_thread.run(backend.close())
    del backend
    gc.collect()
    # An AsyncLLM left alive shuts down only at interpreter teardown: its __del__ fails
    # there, and once kept the pytest process from exiting.
    alive = [o for o in gc.get_objects() if type(o).__name__ == "AsyncLLM"]
    assert not alive, f"{len(alive)} AsyncLLM outlived VllmBackend.close()"
