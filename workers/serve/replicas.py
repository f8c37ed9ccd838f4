"""Asking every replica of a deployment: Serve has no broadcast.

Apart from :mod:`workers.launch` so that the gateway can use it without importing
the app builder (and with it torch).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.serve.handle import DeploymentHandle


async def replica_stats(
    handle: DeploymentHandle[Any], replicas: int, *, key: str = "replica", rounds: int = 20
) -> dict[str, dict[str, Any]]:
    """``stats()`` of every replica behind ``handle``, by the ``key`` field of each reply
    (the replica id; ``consumer`` for the consumer replicas).

    Serve has no broadcast: concurrent calls spread over the replicas, and rounds go on
    until ``replicas`` distinct ones have answered (or ``rounds`` are spent).
    """
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        replies = await asyncio.gather(*(handle.stats.remote() for _ in range(2 * replicas)))
        seen.update({reply[key]: reply for reply in replies})
        if len(seen) >= replicas:
            break
    return seen
