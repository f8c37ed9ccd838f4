"""A consumer's lease on model replicas' device slots, shared with every other consumer.

With several consumer replicas each plans its own window, but a model replica's slots
are one: before a planned job starts, :meth:`SlotLease.acquire` admits it atomically
(``slots_acquire.lua``) only if the replica keeps at most its slots' worth of distinct
adapters and at most its job cap in flight, counting every consumer's jobs; a refused
job waits in the window for the next plan. :meth:`release` gives the slot back when the
job ends. A consumer that dies stops renewing its holder's lease, and its counts stop
counting when the lease runs out (``LORAQ_VISIBILITY_TIMEOUT_S``, as its jobs' entries).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from schemas import Keys, codec
from schemas.scripts import script_source
from workers.scheduling.slot_ledger import Ledger, field_of, ledger_of, live_holders


@dataclass(frozen=True)
class SlotClaim:
    """One planned job to admit: its replica, adapter, and that replica's bounds."""

    replica: str
    adapter: str | None
    slots: int
    max_jobs: int


class SlotLease:
    """One consumer process's holder in ``{P}:slots`` (its name plus a nonce: a successor
    that takes over the name starts with nothing held)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, consumer: str, lease_s: float):
        self.client = client
        self.keys = keys
        self.holder = f"{consumer}:{uuid.uuid4().hex[:8]}"
        self.lease_ms = int(lease_s * 1000)
        self._acquire: AsyncScript = client.register_script(script_source("slots_acquire"))
        self._release: AsyncScript = client.register_script(script_source("slots_release"))

    async def ledger(self) -> Ledger:
        """Every live consumer's jobs in flight per replica and adapter."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.slots)
        pipe.hgetall(self.keys.slot_holders)
        fields, holders = await pipe.execute()
        return ledger_of(
            codec.decode_fields(fields), codec.decode_fields(holders), time.time() * 1000
        )

    async def holders(self) -> int:
        """Consumers holding slots now (at least this one)."""
        holders = codec.decode_fields(await self.client.hgetall(self.keys.slot_holders))
        return max(1, len(live_holders(holders, time.time() * 1000)))

    async def acquire(self, claims: Sequence[SlotClaim]) -> list[bool]:
        """Admit each of ``claims`` (counted from now on) or refuse it, in one script."""
        if not claims:
            return []
        args: list[str | int] = [self.holder, int(time.time() * 1000), self.lease_ms]
        for claim in claims:
            args += [claim.replica, claim.adapter or "", claim.slots, claim.max_jobs]
        keys = [self.keys.slots, self.keys.slot_holders]
        reply = await self._acquire(keys=keys, args=args)
        return [int(value) == 1 for value in reply]

    async def release(self, replica: str, adapter: str | None) -> None:
        """One admitted job of ``adapter`` on ``replica`` has ended."""
        field = field_of(replica, self.holder, adapter)
        await self._release(keys=[self.keys.slots], args=[field])

    async def renew(self) -> None:
        """Keep this holder's counts alive for another lease period."""
        expiry = int(time.time() * 1000) + self.lease_ms
        await self.client.hset(self.keys.slot_holders, self.holder, expiry)

    async def drop(self) -> None:
        """Stop holding anything (the consumer stops): the next admission forgets it."""
        await self.client.hdel(self.keys.slot_holders, self.holder)
