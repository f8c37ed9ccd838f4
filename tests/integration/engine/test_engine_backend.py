"""The HF engine behind the backend seam: typed counters, the same numbers by name."""

from __future__ import annotations

from dataclasses import fields

from engine_kit import request

from workers.engine.backend import Backend, BackendStats
from workers.engine.engine import Engine


async def test_typed_stats_are_the_stats_by_name(engine: Engine) -> None:
    backend: Backend = engine
    await backend.generate(request("a", "count me", 4))
    stats = backend.backend_stats()
    assert isinstance(stats, BackendStats) and stats.tokens_generated >= 1
    assert set(engine.stats()) == {field.name for field in fields(BackendStats)}
    assert engine.stats()["forward_passes"] >= stats.forward_passes > 0
