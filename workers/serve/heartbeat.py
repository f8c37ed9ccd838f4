"""Heartbeats: a model replica's or a consumer's status as JSON in a hash every few
seconds (model replicas in ``{P}:replicas``, consumers in ``{P}:consumers``).

A model replica's beat is also what the consumers' planners know of it (its device
adapters and slots; the jobs in flight come from the slot lease). A failed write is
logged and the next beat tries again (:class:`Periodic`); meanwhile the planners use the
last beat and what each job's output says of its replica.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import redis.asyncio as aioredis

from producer.activity import stale_fields
from schemas.keys import Keys
from schemas.replicas import (
    MISSED_BEATS,
    BackendStats,
    DiskTierCounters,
    Heartbeat,
    ReplicaHeartbeat,
)
from workers.errors import REDIS_DOWN
from workers.serve.periodic import Periodic


def heartbeat_of(
    *,
    replica: str,
    node: str,
    adapters: list[str],
    stats: BackendStats,
    disk: DiskTierCounters,
    interval_s: float,
    now: float,
    slots: int | None = None,
    adapters_in_flight: list[str] | None = None,
) -> ReplicaHeartbeat:
    """The heartbeat of a replica from its backend's counters (:meth:`Backend.backend_stats`)."""
    return ReplicaHeartbeat(
        replica=replica,
        node=node,
        adapters=adapters,
        slots=slots,
        free_slots=None if slots is None else max(0, slots - len(adapters)),
        adapters_in_flight=adapters_in_flight or [],
        backend=stats,
        disk=disk,
        ts=now,
        interval_s=interval_s,
    )


def hash_ttl_s(interval_s: float) -> int:
    """TTL of the whole hash: it outlives a beat or two missed, and dies with the last replica."""
    return max(1, math.ceil(MISSED_BEATS * interval_s))


class HeartbeatWriter:
    """Writes ``status()`` to its hash (``{P}:replicas`` unless told another) every
    ``interval_s`` from a background task."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        status: Callable[[], Heartbeat],
        interval_s: float,
        *,
        hash_key: str | None = None,
        model: type[Heartbeat] = ReplicaHeartbeat,
    ) -> None:
        self.client = client
        self.keys = keys
        self.status = status
        self.interval_s = interval_s
        self.hash_key = hash_key or keys.replicas
        self.model = model
        self._field: str | None = None
        self._loop = Periodic(self.beat, interval_s, "heartbeat")

    def start(self) -> None:
        """Beat now and then every interval, until :meth:`stop` (needs a running loop)."""
        self._loop.start()

    async def beat(self) -> None:
        """Write one heartbeat, refresh the hash's TTL, and drop writers that are gone."""
        status = self.status()
        self._field = status.name
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.hash_key, status.name, status.model_dump_json())
        pipe.expire(self.hash_key, hash_ttl_s(self.interval_s))
        pipe.hgetall(self.hash_key)
        *_, fields = await pipe.execute()
        stale = stale_fields(fields, status.ts, self.model)
        if stale:
            await self.client.hdel(self.hash_key, *stale)

    async def stop(self) -> None:
        """Stop beating and remove this writer's entry (readers see it gone at once)."""
        await self._loop.stop()
        if self._field is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await self.client.hdel(self.hash_key, self._field)
