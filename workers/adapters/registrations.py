"""Adapters registered at run time in ``{P}:adapters``, as the workers read them.

The catalogue of a model replica looks a name up here when the workers' own folders do
not have it; the gateway reads them all to list models. Either way a folder outside the
configured adapter roots is refused.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from schemas import ErrorType
from schemas.adapters import (
    AdapterRegistration,
    InvalidRegistration,
    parse_registration,
    read_registrations,
)
from schemas.keys import Keys
from workers.errors import REDIS_DOWN, EngineError

log = logging.getLogger(__name__)


async def registration(client: aioredis.Redis, keys: Keys, name: str) -> AdapterRegistration | None:
    """The registration of ``name`` (a folder or a URI), or ``None`` when there is none.

    A registration that cannot be used is an ``unknown_adapter`` error naming the problem
    (the folder is the operator's, so it is logged, not told to the client). Redis down
    is an ``internal`` error: a queued job is retried instead of failing for good.
    """
    try:
        raw = await client.hget(keys.adapters, name)
    except REDIS_DOWN as exc:
        raise EngineError(
            ErrorType.INTERNAL, f"adapter {name!r}: the run-time registry is unreachable ({exc})"
        ) from None
    if raw is None:
        return None
    try:
        return parse_registration(raw)
    except InvalidRegistration as exc:
        log.warning("adapter %s: bad registration in %s: %s", name, keys.adapters, exc)
        raise EngineError(
            ErrorType.UNKNOWN_ADAPTER,
            f"adapter {name!r} has an invalid run-time registration; ask the operator "
            "to fix it (loraq adapters list)",
        ) from None


async def registered_locations(client: aioredis.Redis, keys: Keys) -> dict[str, str]:
    """Every usable registration (name -> folder or URI); bad ones are logged and skipped."""
    found = {}
    for item in read_registrations(await client.hgetall(keys.adapters)):
        location = item.path or item.uri
        if location is None:
            log.warning(
                "adapter %s: bad registration in %s: %s", item.name, keys.adapters, item.problem
            )
        else:
            found[item.name] = location
    return found
