"""Counters of the decode loop: forward passes, the adapters they held, tokens."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from workers.adapters.manager import AdapterManager
from workers.engine.backend import BackendStats, EngineObserver
from workers.engine.lora_model import BASE_ADAPTER

__all__ = ["EngineObserver", "PassStats", "backend_stats"]


@dataclass
class PassStats:
    """Written by the model thread only; read from anywhere."""

    forward_passes: int = 0
    multi_adapter_passes: int = 0
    max_adapters_in_pass: int = 0
    max_rows_in_pass: int = 0
    row_steps: int = 0
    rows: int = 0
    tokens_generated: int = 0
    # The distinct adapters of the latest passes, for tests and debugging.
    _recent: deque[frozenset[str]] = field(default_factory=lambda: deque(maxlen=256))
    observer: EngineObserver | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_pass(self, adapters: Sequence[str]) -> None:
        """One forward pass ran with these per-row adapter names."""
        distinct = frozenset(adapters) - {BASE_ADAPTER}
        self.forward_passes += 1
        self.row_steps += len(adapters)
        self.multi_adapter_passes += len(distinct) > 1
        self.max_adapters_in_pass = max(self.max_adapters_in_pass, len(distinct))
        self.max_rows_in_pass = max(self.max_rows_in_pass, len(adapters))
        with self._lock:
            self._recent.append(distinct)
        if self.observer is not None:
            self.observer.forward_pass(len(adapters), len(distinct))

    def recent_passes(self) -> list[frozenset[str]]:
        """The distinct adapters of each of the latest passes, oldest first."""
        with self._lock:
            return list(self._recent)


def backend_stats(
    passes: PassStats, adapters: AdapterManager, *, rows_in_flight: int
) -> BackendStats:
    """The engine's typed counters: the decode loop's, the device tier's, the host tier's."""
    device, host = adapters.device, adapters.host
    counters, host_counters = adapters.policy.counters, host.policy.counters
    return BackendStats(
        forward_passes=passes.forward_passes,
        multi_adapter_passes=passes.multi_adapter_passes,
        max_adapters_in_pass=passes.max_adapters_in_pass,
        max_rows_in_pass=passes.max_rows_in_pass,
        row_steps=passes.row_steps,
        rows=passes.rows,
        tokens_generated=passes.tokens_generated,
        rows_in_flight=rows_in_flight,
        cache_hits=counters.hits,
        cache_loads=counters.loads,
        cache_load_failures=counters.load_failures,
        cache_evictions=counters.evictions,
        adapter_load_ms_total=adapters.load_ms_total,
        adapters_loaded=len(adapters.loaded()),
        host_hits=host_counters.hits,
        host_loads=host_counters.loads,
        host_load_failures=host_counters.load_failures,
        host_evictions=host_counters.evictions,
        host_bytes=host.bytes_used(),
        adapters_on_host=len(host.names()),
        host_load_ms_total=host.load_ms_total,
        device_copies=device.copies,
        device_copy_ms_total=device.copy_ms_total,
        # PEFT's load_adapter reads the folder on the model thread: the only disk reads
        # there (adapters the stacked slots cannot hold).
        model_thread_disk_reads=device.peft_loads,
        peft_load_ms_total=device.peft_load_ms_total,
        adapters_removed=device.removals,
        in_use_evictions=device.in_use_evictions,
    )
