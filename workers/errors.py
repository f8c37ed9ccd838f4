"""Error types every worker package shares; below all of them, so none imports upward.

:class:`EngineError` is how any layer (the adapter catalogue and tiers, a backend, the
Serve deployments) reports a failure its client caused or can act on; ``REDIS_DOWN`` is
what a Redis outage looks like to redis-py. Nothing here imports Ray: the engine, which
imports this, runs without it on the GPU machine (``bench/gpu.py``).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from schemas import ErrorType

# Connection refused or reset, timeouts.
REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)


class EngineError(Exception):
    """A failure of one request that its client caused or can act on.

    Carries the protocol's error ``type``; other rows of the same batch are unaffected.
    """

    def __init__(self, type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.type = type
        self.message = message

    def __reduce__(self) -> tuple[type[EngineError], tuple[ErrorType, str]]:
        # Ray pickles exceptions across processes; keep both fields.
        return (EngineError, (self.type, self.message))
