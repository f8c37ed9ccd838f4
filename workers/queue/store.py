"""The consumer's Redis side: the consumer group, its reads, and the job state scripts.

Every change that touches more than one key is one Lua script (``lua/*.lua``), so a job
is never seen half-written. Keys are all passed in ``KEYS`` so that a ``{prefix}`` hash
tag keeps them in one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from producer.activity import live_replicas
from producer.durability import Durability, ReplicationTimeoutError
from producer.stats import find_group
from schemas import JobStatus, Keys, codec
from schemas.replicas import ReplicaHeartbeat
from schemas.scripts import script_source
from workers.errors import REDIS_DOWN
from workers.queue.coalesce import Coalescer
from workers.settings import DEFAULT_DEAD_MAXLEN

MAX_OUTAGE_BACKOFF_S = 5.0
# Script calls of concurrent jobs sent in one pipeline, at most: enough for every job of a
# consumer at once, small enough that one reply does not hold the others long.
MAX_SCRIPT_BATCH = 256
# Entries renewed per script call, at most: a consumer may hold thousands claimed, and one
# call over all of them (an XPENDING and an XCLAIM each) held Redis tens of milliseconds,
# which every other client's command waited out.
MAX_RENEW_BATCH = 256
T = TypeVar("T")

log = logging.getLogger(__name__)


async def until_reachable(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    recovered: Callable[[], None] | None = None,
) -> T:
    """Run ``call``, waiting out Redis outages with capped backoff; ``recovered`` is
    called when it succeeds after an outage.

    One warning per outage, not one per try: a long outage must not flood the logs.
    """
    delay_s = 0.1
    while True:
        try:
            result = await call()
        except REDIS_DOWN as exc:
            if delay_s == 0.1:
                log.warning("redis unreachable (%s), retrying: %s", what, exc)
            await asyncio.sleep(delay_s)
            delay_s = min(MAX_OUTAGE_BACKOFF_S, delay_s * 2)
        else:
            if delay_s > 0.1 and recovered is not None:
                recovered()
            return result


@dataclass(frozen=True)
class Entry:
    """One entry of ``{P}:jobs`` as read by a consumer; ``repeated``: the field names it
    holds more than once (a client's mistake, or an attempt to smuggle a second job)."""

    entry_id: str
    fields: dict[str, str]
    repeated: frozenset[str] = frozenset()


class MarkOutcome(str, Enum):
    """What :meth:`JobStore.mark` did."""

    OK = "ok"
    FINAL = "final"  # the job had ended already: nothing changed
    CANCEL = "cancel"  # cancellation was asked: nothing changed
    EXHAUSTED = "exhausted"  # started max_attempts times already: nothing changed
    REFUSED = "refused"  # the job's id cannot take its record (value: why): nothing changed


@dataclass(frozen=True)
class Mark:
    """The outcome of :meth:`JobStore.mark` and the attempts count (or final status)."""

    outcome: MarkOutcome
    value: str

    @property
    def attempts(self) -> int:
        """Times the job has been started (for ``OK`` and ``EXHAUSTED``)."""
        return int(self.value) if self.value.isdigit() else 0


@dataclass(frozen=True)
class ScriptCall:
    """One job's state change: one script, its keys and arguments."""

    script: AsyncScript
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class FinalWrite:
    """Everything the final write of one job stores."""

    entry_id: str
    job_id: str
    status: JobStatus
    adapter: str | None
    created_at: float
    ttl_s: int
    fields: dict[str, str]
    dead_payload: str | None = None
    dead_error: str = ""
    # The result's text and the attempt that made it: what the events stream lacks of it
    # (chunks an outage held back) is appended as one last chunk.
    text: str = ""
    attempt: int | None = None


@dataclass(frozen=True)
class Backlog:
    """The size of the queue as Redis reports it (``lag`` ``None``: unknown, or no group)."""

    length: int
    lag: int | None
    pending: int
    dead_letters: int


def _entries(reply: Any) -> list[Entry]:
    """Entries of an XREADGROUP/XAUTOCLAIM reply (deleted entries come back empty), their
    fields as the flat name, value list Redis sent (see :func:`_keep_field_lists`)."""
    return [_entry(codec.as_text(entry_id), fields or []) for entry_id, fields in reply]


def _entry(entry_id: str, flat: list[Any]) -> Entry:
    names = [codec.as_text(name) for name in flat[::2]]
    fields = dict(zip(names, (codec.as_text(value) for value in flat[1::2]), strict=True))
    repeated = frozenset(name for name in fields if names.count(name) > 1)
    return Entry(entry_id, fields, repeated)


def _keep_field_lists(response: Any, **_: Any) -> Any:
    """XREADGROUP / XAUTOCLAIM replies with each entry's fields as Redis sent them:
    redis-py's own parsing turns them into a dict, where a repeated field silently keeps
    its last value, and the consumer must see the repetition to refuse the entry.
    XREADGROUP's streams come as ``[[stream, entries]]`` (RESP2) or a map (RESP3)."""
    if isinstance(response, dict):
        return [[stream, entries] for stream, entries in response.items()]
    return response or []


class JobStore:
    """Typed wrappers around the consumer group commands and the queue scripts."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        events_maxlen: int,
        dead_maxlen: int = DEFAULT_DEAD_MAXLEN,
        durability: Durability | None = None,
    ) -> None:
        self.client = client
        self.durability = durability or Durability()
        self.keys = keys
        self.events_maxlen = events_maxlen
        self.dead_maxlen = dead_maxlen
        # This client is the consumer's own: its stream reads keep repeated fields.
        for command in ("XREADGROUP", "XAUTOCLAIM"):
            client.set_response_callback(command, _keep_field_lists)
        self._mark: AsyncScript = client.register_script(script_source("mark"))
        self._finish: AsyncScript = client.register_script(script_source("finish"))
        self._renew: AsyncScript = client.register_script(script_source("renew"))
        self._trim: AsyncScript = client.register_script(script_source("trim"))
        self._chunk: AsyncScript = client.register_script(script_source("chunk"))
        # The state changes of concurrent jobs (marks, chunks, final writes) share round
        # trips; each is still its own script call, so each job's change stays atomic.
        self._scripts: Coalescer[ScriptCall, Any] = Coalescer(
            self._run_scripts, max_batch=MAX_SCRIPT_BATCH
        )

    async def _run_scripts(self, calls: list[ScriptCall]) -> list[Any]:
        """Run ``calls`` as one pipeline of EVALSHAs; each call's reply, or its error.

        A script the server does not know (it restarted without its script cache) is
        loaded and its calls sent again: a NOSCRIPT reply means that call never ran.
        """
        replies = await self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {id(calls[i].script): calls[i].script for i in missing}.values():
                script.sha = codec.as_text(await self.client.script_load(script.script))
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        # Not a redis-py Script in the pipeline: that costs a SCRIPT EXISTS round trip
        # before every execute.
        finishes = [call.script is self._finish for call in calls]
        durable = self.durability.waits and any(finishes)
        async with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            if durable:
                self.durability.add_wait(pipe)
            replies = list(await pipe.execute(raise_on_error=False))
        if not durable:
            return replies
        try:
            return self.durability.split(replies, [str(call.keys[0]) for call in calls])
        except ReplicationTimeoutError as exc:
            # The final writes stand on the primary but are not safe yet: each fails, and
            # its job keeps its result in memory and writes it again (a no-op but for a
            # new WAIT) until it is replicated, or until a failover lost it and the write
            # lands on the promoted replica. Marks and chunks need no such guarantee.
            return [
                exc if finish and not isinstance(reply, BaseException) else reply
                for finish, reply in zip(finishes, replies[:-1], strict=True)
            ]

    async def ensure_group(self) -> bool:
        """Create the consumer group from the stream's start; ``False`` if it existed."""
        try:
            await self.client.xgroup_create(self.keys.jobs, self.keys.group, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def server_config(self) -> dict[str, str]:
        """The server's persistence and eviction settings; empty where CONFIG is disabled."""
        try:
            reply = await self.client.config_get("appendonly")
            reply.update(await self.client.config_get("maxmemory-policy"))
        except aioredis.ResponseError:  # managed Redis often renames or disables CONFIG
            return {}
        return codec.decode_fields(reply)

    async def read(self, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` entries never delivered before, waiting up to ``block_ms``
        (0: not at all)."""
        reply: Any = await self.client.xreadgroup(
            self.keys.group,
            consumer,
            {self.keys.jobs: ">"},
            count=count,
            block=block_ms if block_ms > 0 else None,
        )
        return _entries(reply[0][1]) if reply else []

    async def read_pending(self, consumer: str, *, count: int, after: str = "0") -> list[Entry]:
        """Up to ``count`` of this consumer's own unacknowledged entries after ``after``.

        What a restarted consumer reads first: entries it took before it stopped. An entry
        deleted from the stream meanwhile comes back with no fields.
        """
        reply: Any = await self.client.xreadgroup(
            self.keys.group, consumer, {self.keys.jobs: after}, count=count
        )
        return _entries(reply[0][1]) if reply else []

    async def reclaim(
        self, consumer: str, *, min_idle_ms: int, count: int, cursor: str = "0-0"
    ) -> tuple[str, list[Entry], list[str]]:
        """Take over entries idle longer than ``min_idle_ms`` (their consumer died).

        Returns the cursor to continue from (``0-0``: scan complete), the claimed entries,
        and the ids of entries deleted from the stream meanwhile (lost; already unpending).
        """
        reply = await self.client.xautoclaim(
            self.keys.jobs, self.keys.group, consumer, min_idle_ms, cursor, count=count
        )
        deleted = [codec.as_text(i) for i in reply[2]] if len(reply) > 2 else []
        return codec.as_text(reply[0]), _entries(reply[1]), deleted

    async def renew(self, consumer: str, entry_ids: list[str]) -> list[str]:
        """Renew the leases of ``entry_ids``; returns those this consumer no longer owns."""
        lost: list[str] = []
        for start in range(0, len(entry_ids), MAX_RENEW_BATCH):
            chunk = entry_ids[start : start + MAX_RENEW_BATCH]
            replies = await self._renew(
                keys=[self.keys.jobs], args=[self.keys.group, consumer, *chunk]
            )
            lost.extend(codec.as_text(i) for i in replies)
        return lost

    async def trim(self) -> int:
        """Drop acknowledged entries from the stream (never pending or undelivered ones).

        Returns how many entries were removed.
        """
        return int(await self._trim(keys=[self.keys.jobs], args=[self.keys.group]))

    async def backlog(self) -> Backlog:
        """Stream length, the group's lag and pending count, dead letters: one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.jobs)
            pipe.xinfo_groups(self.keys.jobs)
            pipe.xlen(self.keys.dead)
            length, groups, dead = await pipe.execute(raise_on_error=False)
        for reply in (length, dead):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(groups, aioredis.ResponseError):  # no stream yet: no job, no consumer
            groups = []
        group = find_group(self.keys.group, groups)
        if group is None:
            return Backlog(length=int(length), lag=None, pending=0, dead_letters=int(dead))
        lag = group.get("lag")
        return Backlog(
            length=int(length),
            lag=None if lag is None else int(lag),
            pending=int(group["pending"]),
            dead_letters=int(dead),
        )

    async def live_replicas(self) -> list[ReplicaHeartbeat]:
        """The model replicas whose heartbeat in ``{P}:replicas`` is fresh now."""
        return live_replicas(await self.client.hgetall(self.keys.replicas), time.time())

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` have a cancellation request."""
        if not job_ids:
            return set()
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self.keys.cancel(job_id))
            found = await pipe.execute()
        return {job_id for job_id, hit in zip(job_ids, found, strict=True) if hit}

    async def mark(
        self,
        job_id: str,
        status: JobStatus,
        *,
        entry_id: str,
        adapter: str | None,
        consumer: str,
        created_at: float,
        ttl_s: int,
        max_attempts: int,
    ) -> Mark:
        """Set a non-final status (``running`` counts an attempt) and its events."""
        reply = await self._eval(
            self._mark,
            keys=[
                self.keys.job(job_id),
                self.keys.job_events(job_id),
                self.keys.events,
                self.keys.cancel(job_id),
            ],
            args=[
                job_id,
                status.value,
                adapter or "",
                consumer,
                repr(time.time()),
                repr(created_at),
                ttl_s,
                self.events_maxlen,
                max_attempts,
                entry_id,
            ],
        )
        return Mark(MarkOutcome(codec.as_text(reply[0])), codec.as_text(reply[1]))

    async def append_chunk(self, job_id: str, text: str, *, attempt: int, offset: int) -> bool:
        """Append generated text to the job's events stream; ``False`` (nothing written)
        when the job has ended or a later attempt has started since ``attempt``.

        ``offset`` is how many UTF-8 bytes of text the attempt had streamed before: a
        chunk sent again after its reply was lost is written once.
        """
        reply = await self._eval(
            self._chunk,
            keys=[self.keys.job(job_id), self.keys.job_events(job_id)],
            args=[text, repr(time.time()), attempt, offset],
        )
        return bool(reply)

    async def finish(self, write: FinalWrite) -> bool:
        """Store the final status once, then acknowledge; ``False`` if nothing was stored.

        Nothing is stored when the job was already final, or when its id cannot take the
        record (another entry owns it, or its keys clash with other keys of the queue):
        then the entry goes to the dead letters under its entry id.
        """
        pairs = [item for pair in write.fields.items() for item in pair]
        reply = await self._eval(
            self._finish,
            keys=[
                self.keys.job(write.job_id),
                self.keys.job_events(write.job_id),
                self.keys.events,
                self.keys.jobs,
                self.keys.dead,
                self.keys.cancel(write.job_id),
            ],
            args=[
                self.keys.group,
                write.entry_id,
                write.job_id,
                write.status.value,
                write.adapter or "",
                repr(time.time()),
                repr(write.created_at),
                write.ttl_s,
                self.events_maxlen,
                "1" if write.dead_payload is not None else "0",
                write.dead_payload or "",
                write.dead_error,
                write.text,
                "" if write.attempt is None else write.attempt,
                self.dead_maxlen,
                *pairs,
            ],
        )
        return bool(reply[0])

    async def _eval(self, script: AsyncScript, *, keys: list[str], args: list[Any]) -> Any:
        """One script call, sent with those of other jobs asked for meanwhile."""
        return await self._scripts.call(ScriptCall(script, keys, args))

    @property
    def write_batches(self) -> tuple[int, int]:
        """Pipelines of script calls sent so far, and the script calls they carried."""
        return self._scripts.batches, self._scripts.ops

    async def ack(self, entry_id: str) -> None:
        """Acknowledge an entry whose job needs no write (it had ended already)."""
        await self.client.xack(self.keys.jobs, self.keys.group, entry_id)
