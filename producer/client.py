"""``Producer`` (sync) and ``AsyncProducer`` (asyncio): submit jobs, read and wait for them.

Both are thin: validation, script arguments and reply parsing live in
:mod:`producer.submission`, :mod:`producer.following`, :mod:`producer.scripts` and
:mod:`producer.stats`, shared by the two.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script
from typing_extensions import Self, Unpack

from producer import connection
from producer.durability import Durability, ReplicationTimeoutError
from producer.errors import (
    JobTimeoutError,
    RateLimitedError,
    SubmitError,
    connection_errors,
    endpoint_of,
)
from producer.following import (
    OWNER_FIELDS,
    EventFollower,
    block_slice_s,
    final_record,
    parse_owner,
    parse_record,
)
from producer.scripts import CANCEL, ENQUEUE, cancel_args, cancel_took_effect
from producer.settings import DEFAULT_JOB_TTL_S, ClientSettings
from producer.stats import QueueStats, parse_stats, queue_commands
from producer.submission import (
    EnqueueCall,
    EnqueueOutcome,
    JobFields,
    JobInput,
    TenantRate,
    build_job,
    checked_job_id,
    chunked,
    enqueue_call,
    prepare_job,
    prepare_jobs,
    rate_refusal,
    retry_after_s,
    sort_replies,
)
from schemas.jobs import Job
from schemas.keys import DEFAULT_PREFIX, Keys
from schemas.records import JobEvent, JobRecord

DEFAULT_CHUNK_SIZE = 500

ClientT = TypeVar("ClientT", redis.Redis, redis.asyncio.Redis)


class _ProducerBase(Generic[ClientT]):
    """State and pure steps shared by both producers."""

    def __init__(
        self,
        client: ClientT | None = None,
        *,
        prefix: str | None = None,
        job_ttl_s: int | None = None,
        durability: Durability | None = None,
    ) -> None:
        """Around ``client``; with none, a client of its own from the settings
        (``LORAQ_REDIS_URL``, ``LORAQ_PREFIX``, ...), closed with the producer.
        ``durability``: replicas each enqueue waits for (default: the settings')."""
        settings = ClientSettings() if client is None else None
        if client is None:
            assert settings is not None
            client = self._new_client(settings)
        kwargs = connection.connection_kwargs(client)
        self.keys = Keys(prefix or (settings.prefix if settings else DEFAULT_PREFIX))
        self.job_ttl_s = job_ttl_s or (settings.job_ttl_s if settings else DEFAULT_JOB_TTL_S)
        self.durability = durability or (Durability.of(settings) if settings else Durability())
        self._client: ClientT = client
        self._url = endpoint_of(kwargs)
        self._slice_s = block_slice_s(kwargs)
        self._owns_client = False
        # The rate every tenant's submissions pass, checked in the enqueue script.
        self.rate = TenantRate()
        if settings is not None:
            self._adopt(settings)
        self._enqueue: Script | AsyncScript = client.register_script(ENQUEUE)
        self._cancel: Script | AsyncScript = client.register_script(CANCEL)

    @staticmethod
    def _new_client(settings: ClientSettings) -> ClientT:
        raise NotImplementedError

    @property
    def client(self) -> ClientT:
        """The Redis client in use."""
        return self._client

    def _adopt(self, settings: ClientSettings) -> Self:
        self.rate = TenantRate(settings.tenant_rate_per_s, settings.tenant_burst)
        self._url = connection.describe(settings)
        self._owns_client = True
        return self

    def _errors(self) -> AbstractContextManager[None]:
        return connection_errors(self._url)

    @staticmethod
    @contextmanager
    def _refusals(call: EnqueueCall) -> Iterator[None]:
        try:
            yield
        except redis.exceptions.ResponseError as exc:
            raise SubmitError([], {call.job_id: str(exc)}) from exc

    def _call(self, job: Job, owner: str | None = None, *, limit_rate: bool = True) -> EnqueueCall:
        rate = self.rate if limit_rate else None
        return enqueue_call(self.keys, job, job_ttl_s=self.job_ttl_s, owner=owner, rate=rate)

    @staticmethod
    def _check_rate(call: EnqueueCall, reply: Any) -> None:
        wait_s = retry_after_s(reply)
        if wait_s is not None:
            raise RateLimitedError([], {call.job_id: rate_refusal(wait_s)}, wait_s)

    def _record_key(self, job_id: str) -> str:
        return self.keys.job(checked_job_id(job_id))

    def _cancel_keys(self, job_ids: Sequence[str]) -> list[str]:
        return [key for i in job_ids for key in (self._record_key(i), self.keys.cancel(i))]

    def _follower(self, job_ids: Iterable[str], timeout: float | None) -> EventFollower:
        ids = [checked_job_id(job_id) for job_id in job_ids]
        return EventFollower(self.keys, ids, timeout_s=timeout, slice_s=self._slice_s)

    def _replicated(self, replies: list[Any], calls: Sequence[EnqueueCall]) -> list[Any]:
        return self.durability.split(replies, [call.job_id for call in calls])

    @staticmethod
    @contextmanager
    def _whole_call(calls: Sequence[EnqueueCall], outcome: EnqueueOutcome) -> Iterator[None]:
        # A chunk short of replicas ends the call: its error names every id of the call
        # (those assigned here too), so that the caller resubmits under the same ids.
        try:
            yield
        except ReplicationTimeoutError as exc:
            exc.in_call([call.job_id for call in calls], outcome.submitted)
            raise

    @staticmethod
    def _result(outcome: EnqueueOutcome) -> list[str]:
        if outcome.retry_after_s:
            raise RateLimitedError(outcome.submitted, outcome.failed, outcome.retry_after_s)
        if outcome.failed:
            raise SubmitError(outcome.submitted, outcome.failed)
        return outcome.submitted


class Producer(_ProducerBase[redis.Redis]):
    """Submits jobs to a loraq queue and reads their records, over a sync Redis client.

    ``Producer()`` reads the settings (``LORAQ_REDIS_URL``, ``LORAQ_PREFIX``, ...; also
    :meth:`from_settings`), ``Producer.from_url(url)`` takes a URL, and
    ``Producer(client, prefix=...)`` wraps a client of your own.
    Redis that cannot be reached raises :class:`LoraqConnectionError` after the client's
    retries.
    """

    _enqueue: Script
    _cancel: Script

    @staticmethod
    def _new_client(settings: ClientSettings) -> redis.Redis:
        return connection.sync_client(settings)

    @classmethod
    def from_settings(cls, settings: ClientSettings | None = None) -> Producer:
        """A producer with its own client; :meth:`close` closes it."""
        settings = settings or ClientSettings()
        client = connection.sync_client(settings)
        return cls(client, **_options(settings))._adopt(settings)

    @classmethod
    def from_url(cls, url: str, *, prefix: str | None = None) -> Producer:
        """A producer on the Redis at ``url`` (other settings from the environment)."""
        return cls.from_settings(_settings_for(url, prefix))

    def submit(self, prompt: str | None = None, **fields: Unpack[JobFields]) -> str:
        """Validate and enqueue one job; returns its id (assigned here when not given).

        Keyword arguments are the :class:`~schemas.jobs.Job` fields: ``adapter``,
        ``messages``, ``params`` (dict or ``GenerationParams``), ``id``, ``priority``,
        ``tenant``, ``deadline``, ``result_ttl``, ``metadata``. Invalid input raises
        :class:`JobValidationError` (naming each field and bound) and writes nothing.
        Submitting an ``id`` that already has a record enqueues nothing and returns that
        id: submission is idempotent, so a retry after a lost reply never runs a job
        twice. A job Redis refuses (a key of the wrong type at its place) raises
        :class:`SubmitError` and leaves nothing behind.
        """
        return self._submit(build_job(prompt, **fields))

    def submit_job(self, job: Job) -> str:
        """:meth:`submit` for a :class:`Job` model (validated again; an id assigned if none)."""
        return self._submit(prepare_job(job))

    def _submit(self, job: Job) -> str:
        call = self._call(job)
        if self.durability.waits:  # the WAIT must share the write's pipeline
            return self._result(self._enqueue_chunk([call]))[0]
        with self._errors(), self._refusals(call):
            reply = self._enqueue(keys=call.keys, args=call.args)
        self._check_rate(call, reply)
        return call.job_id

    def submit_many(
        self,
        jobs: Iterable[JobInput],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        owner: str | None = None,
        limit_rate: bool = True,
    ) -> list[str]:
        """Enqueue many jobs (``Job`` models or dicts), one round trip per ``chunk_size``.

        Every job is validated before anything is written (:class:`JobValidationError`
        names the first bad one by index). Returns the ids in input order. Each job is
        enqueued atomically on its own; jobs that Redis refused raise :class:`SubmitError`
        at the end, listing which ids went in and which did not. ``owner`` goes to each
        new record's ``owner`` field (the HTTP gateway's digest of the caller's API key).
        With ``tenant_rate_per_s`` set, jobs over their tenant's rate are not written and
        raise :class:`RateLimitedError` (with ``retry_after_s``) at the end, unless
        ``limit_rate`` is false: the workers then hold them back instead.
        With ``LORAQ_REDIS_MIN_REPLICAS``, a chunk the replicas did not confirm in time
        raises :class:`ReplicationTimeoutError` with every id of the call (``job_ids``).
        """
        outcome = EnqueueOutcome()
        calls = [self._call(job, owner, limit_rate=limit_rate) for job in prepare_jobs(jobs)]
        with self._whole_call(calls, outcome):
            for chunk in chunked(calls, chunk_size):
                outcome.extend(self._enqueue_chunk(chunk))
        return self._result(outcome)

    def _enqueue_chunk(self, calls: Sequence[EnqueueCall]) -> EnqueueOutcome:
        with self._errors():
            outcome = sort_replies(calls, self._pipeline_enqueue(calls))
            if outcome.script_missing:
                self._client.script_load(ENQUEUE)
                outcome = sort_replies(calls, self._pipeline_enqueue(calls))
        return outcome

    def _pipeline_enqueue(self, calls: Sequence[EnqueueCall]) -> list[Any]:
        # EVALSHA directly: a pipeline given the Script object would first ask
        # SCRIPT EXISTS, a second round trip per chunk.
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(self._enqueue.sha, len(call.keys), *call.keys, *call.args)
        self.durability.add_wait(pipe)
        return self._replicated(pipe.execute(raise_on_error=False), calls)

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, ``None`` when there is none (unknown id, expired, or not yet
        taken by a consumer when a plain client submitted it)."""
        with self._errors():
            return parse_record(job_id, self._client.hgetall(self._record_key(job_id)))

    def owner(self, job_id: str) -> tuple[bool, str | None]:
        """Whether the job has a record, and the record's ``owner`` (``None``: none)."""
        with self._errors():
            return parse_owner(self._client.hmget(self._record_key(job_id), OWNER_FIELDS))

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job ends and return its record; :class:`JobTimeoutError` after
        ``timeout`` seconds (``None``: no limit). A job that already ended returns at once."""
        return self.wait_many([job_id], timeout)[job_id]

    def wait_many(
        self, job_ids: Iterable[str], timeout: float | None = None
    ) -> dict[str, JobRecord]:
        """Block until every job ends; their records by id. On timeout,
        :class:`JobTimeoutError` lists the pending ids and carries the ended ones."""
        done: dict[str, JobRecord] = {}
        try:
            for record in self.as_completed(job_ids, timeout):
                done[record.id] = record
        except JobTimeoutError as exc:
            raise JobTimeoutError(exc.pending, done, cast(float, timeout)) from None
        return done

    def as_completed(
        self, job_ids: Iterable[str], timeout: float | None = None
    ) -> Iterator[JobRecord]:
        """The records of the jobs, each as soon as it ends (all streams in one XREAD)."""
        for events in self._follow(job_ids, timeout):
            finals = {job_id: event for job_id, event in events if event.is_final}
            if finals:
                yield from self._final_records(finals)

    def events(self, job_id: str, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events from the first (status changes, text chunks) up to the final one."""
        for events in self._follow([job_id], timeout):
            for _, event in events:
                yield event

    def _follow(
        self, job_ids: Iterable[str], timeout: float | None
    ) -> Iterator[list[tuple[str, JobEvent]]]:
        follower = self._follower(job_ids, timeout)
        while (read := follower.next_read()) is not None:
            with self._errors():
                reply = self._client.xread(cast(Any, read.streams), block=read.block_ms)
            yield follower.feed(reply)

    def _final_records(self, finals: Mapping[str, JobEvent]) -> list[JobRecord]:
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for job_id in finals:
                pipe.hgetall(self.keys.job(job_id))
            replies = pipe.execute()
        return [final_record(i, f, e) for (i, e), f in zip(finals.items(), replies, strict=True)]

    def cancel(self, job_id: str, *, owner: str | None = None) -> bool:
        """Ask for the job to be cancelled; whether it exists and had not ended.

        A queued job then ends ``cancelled`` without running; a running one stops at its
        next decode step. Nothing is asked for an id without a record (unknown, expired,
        or a plain client's job no consumer has taken yet) or for a job that ended, so no
        job submitted later under the id is cancelled. With ``owner``, only a record of
        that owner is cancelled.
        """
        return self.cancel_many([job_id], owner=owner)[0]

    def cancel_many(self, job_ids: Sequence[str], *, owner: str | None = None) -> list[bool]:
        """:meth:`cancel` for each job, in one script (one round trip); whether each took
        effect."""
        if not job_ids:
            return []
        with self._errors():
            replies = self._cancel(keys=self._cancel_keys(job_ids), args=cancel_args(owner))
        return [cancel_took_effect(reply) for reply in replies]

    def stats(self) -> QueueStats:
        """Stream length, pending entries, consumers, lag and dead letters of the queue."""
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            queue_commands(pipe, self.keys)
            return parse_stats(self.keys, pipe.execute(raise_on_error=False))

    def close(self) -> None:
        """Close the client if this producer made it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncProducer(_ProducerBase[redis.asyncio.Redis]):
    """:class:`Producer` for asyncio, over a ``redis.asyncio`` client; the same methods,
    awaited (``events`` and ``as_completed`` are async iterators)."""

    _enqueue: AsyncScript
    _cancel: AsyncScript

    @staticmethod
    def _new_client(settings: ClientSettings) -> redis.asyncio.Redis:
        return connection.async_client(settings)

    @classmethod
    def from_settings(cls, settings: ClientSettings | None = None) -> AsyncProducer:
        """A producer with its own client; :meth:`aclose` closes it."""
        settings = settings or ClientSettings()
        client = connection.async_client(settings)
        return cls(client, **_options(settings))._adopt(settings)

    @classmethod
    def from_url(cls, url: str, *, prefix: str | None = None) -> AsyncProducer:
        """See :meth:`Producer.from_url`."""
        return cls.from_settings(_settings_for(url, prefix))

    async def submit(self, prompt: str | None = None, **fields: Unpack[JobFields]) -> str:
        """See :meth:`Producer.submit` (idempotent for an existing ``id``)."""
        return await self._submit(build_job(prompt, **fields))

    async def submit_job(self, job: Job) -> str:
        """See :meth:`Producer.submit_job`."""
        return await self._submit(prepare_job(job))

    async def _submit(self, job: Job) -> str:
        call = self._call(job)
        if self.durability.waits:  # the WAIT must share the write's pipeline
            return self._result(await self._enqueue_chunk([call]))[0]
        with self._errors(), self._refusals(call):
            reply = await self._enqueue(keys=call.keys, args=call.args)
        self._check_rate(call, reply)
        return call.job_id

    async def submit_many(
        self,
        jobs: Iterable[JobInput],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        owner: str | None = None,
        limit_rate: bool = True,
    ) -> list[str]:
        """See :meth:`Producer.submit_many`."""
        outcome = EnqueueOutcome()
        calls = [self._call(job, owner, limit_rate=limit_rate) for job in prepare_jobs(jobs)]
        with self._whole_call(calls, outcome):
            for chunk in chunked(calls, chunk_size):
                outcome.extend(await self._enqueue_chunk(chunk))
        return self._result(outcome)

    async def _enqueue_chunk(self, calls: Sequence[EnqueueCall]) -> EnqueueOutcome:
        with self._errors():
            outcome = sort_replies(calls, await self._pipeline_enqueue(calls))
            if outcome.script_missing:
                await self._client.script_load(ENQUEUE)
                outcome = sort_replies(calls, await self._pipeline_enqueue(calls))
        return outcome

    async def _pipeline_enqueue(self, calls: Sequence[EnqueueCall]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(self._enqueue.sha, len(call.keys), *call.keys, *call.args)
        self.durability.add_wait(pipe)
        return self._replicated(await pipe.execute(raise_on_error=False), calls)

    async def get(self, job_id: str) -> JobRecord | None:
        """See :meth:`Producer.get`."""
        with self._errors():
            return parse_record(job_id, await self._client.hgetall(self._record_key(job_id)))

    async def owner(self, job_id: str) -> tuple[bool, str | None]:
        """See :meth:`Producer.owner`."""
        with self._errors():
            reply = await self._client.hmget(self._record_key(job_id), OWNER_FIELDS)
        return parse_owner(reply)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """See :meth:`Producer.wait`."""
        return (await self.wait_many([job_id], timeout))[job_id]

    async def wait_many(
        self, job_ids: Iterable[str], timeout: float | None = None
    ) -> dict[str, JobRecord]:
        """See :meth:`Producer.wait_many`."""
        done: dict[str, JobRecord] = {}
        try:
            async for record in self.as_completed(job_ids, timeout):
                done[record.id] = record
        except JobTimeoutError as exc:
            raise JobTimeoutError(exc.pending, done, cast(float, timeout)) from None
        return done

    async def as_completed(
        self, job_ids: Iterable[str], timeout: float | None = None
    ) -> AsyncIterator[JobRecord]:
        """See :meth:`Producer.as_completed`."""
        async for events in self._follow(job_ids, timeout):
            finals = {job_id: event for job_id, event in events if event.is_final}
            if finals:
                for record in await self._final_records(finals):
                    yield record

    async def events(self, job_id: str, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """See :meth:`Producer.events`."""
        async for events in self._follow([job_id], timeout):
            for _, event in events:
                yield event

    async def _follow(
        self, job_ids: Iterable[str], timeout: float | None
    ) -> AsyncIterator[list[tuple[str, JobEvent]]]:
        follower = self._follower(job_ids, timeout)
        while (read := follower.next_read()) is not None:
            with self._errors():
                reply = await self._client.xread(cast(Any, read.streams), block=read.block_ms)
            yield follower.feed(reply)

    async def _final_records(self, finals: Mapping[str, JobEvent]) -> list[JobRecord]:
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for job_id in finals:
                pipe.hgetall(self.keys.job(job_id))
            replies = await pipe.execute()
        return [final_record(i, f, e) for (i, e), f in zip(finals.items(), replies, strict=True)]

    async def cancel(self, job_id: str, *, owner: str | None = None) -> bool:
        """See :meth:`Producer.cancel`."""
        return (await self.cancel_many([job_id], owner=owner))[0]

    async def cancel_many(self, job_ids: Sequence[str], *, owner: str | None = None) -> list[bool]:
        """See :meth:`Producer.cancel_many`."""
        if not job_ids:
            return []
        with self._errors():
            replies = await self._cancel(keys=self._cancel_keys(job_ids), args=cancel_args(owner))
        return [cancel_took_effect(reply) for reply in replies]

    async def stats(self) -> QueueStats:
        """See :meth:`Producer.stats`."""
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            queue_commands(pipe, self.keys)
            return parse_stats(self.keys, await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Close the client if this producer made it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _options(settings: ClientSettings) -> dict[str, Any]:
    """What a producer takes from the settings besides its client."""
    return {
        "prefix": settings.prefix,
        "job_ttl_s": settings.job_ttl_s,
        "durability": Durability.of(settings),
    }


def _settings_for(url: str, prefix: str | None) -> ClientSettings:
    """The environment's settings with ``url`` (and ``prefix``, when given) in place."""
    overrides: dict[str, Any] = {"redis_url": url}
    if prefix is not None:
        overrides["prefix"] = prefix
    return ClientSettings(**overrides)
