"""The HF engine behind the backend seam: typed counters."""

from __future__ import annotations

from engine_kit import request

from workers.engine.backend import Backend, BackendStats
from workers.engine.engine import Engine


async def test_the_backend_reports_typed_counters_that_grow(engine: Engine) -> None:
    backend: Backend = engine
    await backend.generate(request("a", "count me", 4))
    stats = backend.backend_stats()
    assert isinstance(stats, BackendStats) and stats.tokens_generated >= 1
    assert engine.backend_stats().forward_passes >= stats.forward_passes > 0
