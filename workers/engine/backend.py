"""The seam between the serving layers and an inference backend (the HF engine, or vLLM).

Neutral on purpose: no torch, no transformers. A backend takes and gives the shared types
of :mod:`workers.engine.requests` and reports :class:`BackendStats`, a typed record (the
wire's, embedded as it is in a replica's heartbeat), so that no layer reads counters by
key names it has to guess.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from schemas import ErrorType
from schemas.replicas import BackendStats
from workers.adapters.resolved import ResolvedAdapter
from workers.engine.requests import (
    EngineError,
    GenerationOutput,
    GenerationRequest,
    TextDelta,
)

__all__ = [
    "Backend",
    "BackendStats",
    "EngineError",
    "EngineObserver",
    "GenerationOutput",
    "GenerationRequest",
    "TextDelta",
]


class EngineObserver(Protocol):
    """Told of every forward pass and adapter load, on a backend's own thread: must be cheap.

    This is how the metrics of the Serve layer see a backend without it importing Ray. A
    backend that cannot see its forward passes (vLLM) reports adapter loads only.
    """

    def forward_pass(self, rows: int, adapters: int) -> None:
        """One pass ran ``rows`` rows of ``adapters`` distinct adapters (base not counted)."""

    def adapter_loaded(self, seconds: float) -> None:
        """An adapter was loaded onto the device in ``seconds`` (evictions included)."""

    def adapter_read(self, seconds: float) -> None:
        """An adapter was read from disk into host memory in ``seconds`` (loader thread)."""


async def output_of(events: AsyncGenerator[TextDelta | GenerationOutput, None]) -> GenerationOutput:
    """The output at the end of a backend's row ``events``, which are closed on return
    (for ``generate``: both backends stream a row and keep only its output)."""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, GenerationOutput):
                return event
    raise EngineError(ErrorType.INTERNAL, "the row ended without an output")


def resolved_adapter(request: GenerationRequest) -> ResolvedAdapter | None:
    """The request's adapter as its model replica resolved it (``None``: the base)."""
    if not request.adapter:
        return None
    if request.resolved is None or request.resolved.name != request.adapter:
        raise EngineError(
            ErrorType.INTERNAL, f"adapter {request.adapter!r} reached the backend unresolved"
        )
    return request.resolved


class Backend(Protocol):
    """What the model deployment needs from an inference backend.

    A backend only runs forward passes: adapters reach it resolved (a request's
    ``resolved``, a :class:`ResolvedAdapter`: one version of one adapter in a local
    folder, keyed ``name@version``), by the catalogue above it
    (:mod:`workers.adapters.resolver`). It validates a folder against the base model
    before its first load (``incompatible_adapter``). Every coroutine runs on the one
    event loop the backend serves.
    """

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        """Run ``request`` to the end; raises :class:`EngineError` for a request at fault."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | GenerationOutput]:
        """Text deltas as they are made, then the output; closing it cancels the row."""
        ...

    def cancel(self, request_id: str) -> bool:
        """Stop the rows of ``request_id``; whether any was running."""
        ...

    async def ensure_adapter(self, adapter: ResolvedAdapter) -> None:
        """Make ``adapter`` warm on the device (validated against the base first)."""
        ...

    async def prefetch(self, adapter: ResolvedAdapter) -> None:
        """Warm ``adapter`` ahead of its requests, evicting nothing; never raises."""
        ...

    def drop_adapter(self, key: str) -> bool:
        """Free adapter version ``key`` once no row uses it; whether it was held."""
        ...

    def loaded_adapters(self) -> list[str]:
        """Keys of the adapters on the device now, least recently used first."""
        ...

    def host_adapters(self) -> list[str]:
        """Keys of the adapters held in host memory, least recently used first."""
        ...

    def observe(self, observer: EngineObserver) -> None:
        """Report forward passes and adapter loads to ``observer`` from now on."""
        ...

    def backend_stats(self) -> BackendStats:
        """The backend's counters."""
        ...

    def check_health(self) -> None:
        """Raise :class:`EngineError` (``model_unavailable``) once this backend can run no
        more rows (its engine process or model thread is gone for good)."""
        ...

    async def close(self) -> None:
        """Finish the rows in flight, then stop."""
        ...
