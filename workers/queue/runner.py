"""One job's way through a consumer: parse, check, start, generate, store the end, ack.

The order is the delivery guarantee: the entry is acknowledged only by the script that
stores the final status, so a consumer that dies at any point leaves the entry pending
for another one to reclaim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ray.exceptions import RayActorError

from schemas import ErrorType, Job, JobError, JobResult, JobStatus, Timings, codec
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest, TextDelta
from workers.errors import REDIS_DOWN
from workers.logs import job_extra
from workers.queue import policy
from workers.queue.store import (
    Entry,
    FinalWrite,
    JobStore,
    MarkOutcome,
    until_reachable,
)
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Where a consumer sends generation requests (the LoRAModel deployment)."""

    def stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[TextDelta | GenerationOutput, None]:
        """Text deltas while the request generates, then its output last."""
        ...


class JobObserver(Protocol):
    """Told of each final status a consumer stores (the metrics of the Serve layer)."""

    def job_finished(
        self,
        job: Job | None,
        status: JobStatus,
        *,
        result: JobResult | None,
        error: JobError | None,
    ) -> None:
        """``job`` (``None``: it could not be parsed) ended with ``status``."""


class Cancelled(Exception):
    """The job's generation was stopped because its cancellation was asked."""

    def __init__(self, text: str) -> None:
        super().__init__("cancelled while running")
        self.text = text


@dataclass
class InFlight:
    """A job a consumer holds: its entry, and its generation while one runs."""

    entry_id: str
    job_id: str | None = None
    adapter: str | None = None
    # The model replica the scheduler sent it to (None: Serve's router chose).
    replica: str | None = None
    # The replica that served it and its device adapters then, from the output.
    served_by: tuple[str, tuple[str, ...]] | None = None
    generation: asyncio.Task[GenerationOutput] | None = None
    cancel_requested: bool = False
    text: list[str] = field(default_factory=list)
    # The start of the job this consumer runs (from its 'running' mark); 0 before one.
    attempt: int = 0
    # Cleared when the job's events stream refused this attempt's text: overtaken.
    streaming: bool = True
    # How many pieces of ``text`` are in the events stream, and their UTF-8 bytes; the
    # rest waits there for Redis to answer again.
    streamed_pieces: int = 0
    streamed_bytes: int = 0
    # Tokens its generation made, once it ended (its tenant's share is settled with them).
    completion_tokens: int = 0

    def start(self, attempt: int) -> None:
        """Forget the text of an earlier attempt: ``attempt`` streams from the start."""
        self.attempt, self.streaming = attempt, True
        self.streamed_pieces = self.streamed_bytes = 0
        self.text.clear()

    @property
    def unstreamed(self) -> list[str]:
        """The pieces of ``text`` not in the events stream yet."""
        return self.text[self.streamed_pieces :]

    def final_text(self, text: str) -> str:
        """``text`` for the final write to complete the events stream with, or ``""`` when
        the stream cannot lead to it (the result is not the streamed text continued)."""
        return text if text.startswith("".join(self.text)) else ""

    def request_cancel(self) -> bool:
        """Stop the running generation; ``False`` when none runs."""
        self.cancel_requested = True
        if self.generation is None or self.generation.done():
            return False
        return self.generation.cancel()


def engine_error(exc: BaseException) -> EngineError | None:
    """The :class:`EngineError` behind ``exc``, also when Ray wrapped it in its own error."""
    for candidate in (getattr(exc, "cause", None), exc, exc.__cause__):
        if isinstance(candidate, EngineError) and hasattr(candidate, "type"):
            return candidate
    return None


def unknown_error_type(exc: BaseException) -> ErrorType:
    """The protocol's type of a failure no layer of ours described: a model replica that
    died under the job is ``model_unavailable``, anything else ``internal``."""
    # RayActorError: the replica died under the request, or could not be reached.
    return ErrorType.MODEL_UNAVAILABLE if isinstance(exc, RayActorError) else ErrorType.INTERNAL


def error_type(exc: BaseException) -> ErrorType:
    """The protocol's type of any failure: its :class:`EngineError`'s, else
    :func:`unknown_error_type`'s."""
    known = engine_error(exc)
    return known.type if known else unknown_error_type(exc)


class JobRunner:
    """Runs one stream entry to its final, acknowledged status."""

    def __init__(
        self,
        store: JobStore,
        dispatcher: Dispatcher,
        settings: WorkerSettings,
        consumer: str,
        *,
        observer: JobObserver | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self.consumer = consumer  # its name in the group; the record's field 'worker'
        self.observer = observer

    async def run(self, entry: Entry, slot: InFlight) -> None:
        """Take ``entry`` from parse to acknowledgement."""
        if not entry.fields:
            # XREADGROUP returns deleted entries of the pending list without fields.
            log.warning("entry %s was deleted from the stream; acknowledging it", entry.entry_id)
            await self.store.ack(entry.entry_id)
            return
        parsed = policy.parse_entry(entry.entry_id, entry.fields, repeated=entry.repeated)
        if isinstance(parsed, policy.Rejected):
            log.debug(
                "job %s rejected: %s",
                parsed.job_id,
                parsed.message,
                extra=job_extra(parsed.job_id, None),
            )
            await self._end(
                entry,
                parsed.job_id,
                None,
                JobStatus.FAILED,
                error=JobError(type=ErrorType.VALIDATION, message=parsed.message),
                payload=parsed.payload,
            )
            return
        job = parsed
        slot.job_id, slot.adapter = job.id, job.adapter_name
        if policy.is_expired(job, time.time()):
            error = _error(ErrorType.TIMEOUT, "the deadline passed before the job started")
            await self._end_job(entry, job, JobStatus.EXPIRED, error=error)
            return
        await self._attempts(entry, job, slot)

    async def _attempts(self, entry: Entry, job: Job, slot: InFlight) -> None:
        """Start the job and run it, again after failures it did not cause."""
        job_id = str(job.id)
        while True:
            mark = await self.store.mark(
                job_id,
                JobStatus.RUNNING,
                entry_id=entry.entry_id,
                adapter=job.adapter_name,
                consumer=self.consumer,
                created_at=policy.created_at_of(entry.entry_id),
                ttl_s=self.settings.job_ttl_s,
                max_attempts=self.settings.max_attempts,
            )
            if mark.outcome is MarkOutcome.FINAL:
                await self.store.ack(entry.entry_id)
                return
            if mark.outcome is MarkOutcome.CANCEL:
                await self._end_job(entry, job, JobStatus.CANCELLED, error=_cancelled())
                return
            if mark.outcome is MarkOutcome.REFUSED:
                # The final write dead-letters it under its entry id, with this reason.
                error = _error(ErrorType.VALIDATION, mark.value)
                await self._end_job(entry, job, JobStatus.FAILED, error=error)
                return
            if mark.outcome is MarkOutcome.EXHAUSTED:
                message = f"the job was started {mark.attempts} times without finishing"
                error = _error(ErrorType.ATTEMPTS_EXHAUSTED, message)
                await self._end_job(entry, job, JobStatus.FAILED, error=error)
                return
            started_at = time.time()
            slot.start(mark.attempts)
            try:
                output = await self._generate(job, slot)
            except Cancelled as exc:
                result = _result(job, None, exc.text, entry, started_at)
                await self._end_job(entry, job, JobStatus.CANCELLED, result=result, slot=slot)
                return
            except asyncio.CancelledError:
                # The consumer is stopping (its app deleted, a model that never started):
                # the entry stays pending for the next consumer, and the record says it is
                # waiting again rather than 'running' on a consumer that is gone.
                await asyncio.shield(self._requeue(entry, job))
                raise
            except Exception as exc:
                if await self._after_failure(entry, job, exc, mark.attempts):
                    continue
                return
            slot.completion_tokens = output.completion_tokens
            result = _result(job, output, output.text, entry, started_at)
            await self._end_job(entry, job, JobStatus.SUCCEEDED, result=result, slot=slot)
            return

    async def _generate(self, job: Job, slot: InFlight) -> GenerationOutput:
        """Run the generation as a task of its own, so a cancel request can stop it."""
        slot.generation = asyncio.ensure_future(self._stream(job, slot))
        try:
            return await asyncio.shield(slot.generation)
        except asyncio.CancelledError:
            if slot.cancel_requested and slot.generation.cancelled():
                raise Cancelled("".join(slot.text)) from None
            slot.generation.cancel()
            raise
        except Exception as exc:
            # A stopped generation may end in an error rather than as cancelled (Serve
            # raises RequestCancelledError when its stream was being read): the job was
            # still cancelled, not failed, and must not be retried.
            if slot.cancel_requested:
                log.debug(
                    "job %s: generation stopped by its cancel: %r",
                    job.id,
                    exc,
                    extra=job_extra(job.id, job.adapter_name),
                )
                raise Cancelled("".join(slot.text)) from None
            raise
        finally:
            slot.generation = None

    async def _stream(self, job: Job, slot: InFlight) -> GenerationOutput:
        """Forward the text as it grows to the job's events stream; return the output.

        Closing the model's stream (``aclosing``) is what stops the row on the replica.
        """
        request = GenerationRequest.from_job(job, target_replica=slot.replica)
        async with contextlib.aclosing(self.dispatcher.stream(request)) as items:
            async for item in items:
                if isinstance(item, GenerationOutput):
                    if item.replica is not None and item.device_adapters is not None:
                        slot.served_by = (item.replica, tuple(item.device_adapters))
                    return item
                slot.text.append(item.text)
                await self._stream_text(job, slot)
                if slot.cancel_requested:
                    # redis-py's asyncio client can swallow a task's cancellation that
                    # lands in a command (redis/redis-py#2028): do not rely on it.
                    raise asyncio.CancelledError
        raise RuntimeError("the model's stream ended without an output")

    async def _stream_text(self, job: Job, slot: InFlight) -> None:
        """Append the text not streamed yet to the job's events stream.

        With Redis unreachable the text waits for the next chunk (or the final write),
        so that the chunks still add up to the result.
        """
        if not slot.streaming:
            return
        extra = job_extra(job.id, job.adapter_name)
        pieces = slot.unstreamed
        text = "".join(pieces)
        try:
            appended = await self.store.append_chunk(
                str(job.id), text, attempt=slot.attempt, offset=slot.streamed_bytes
            )
        except REDIS_DOWN as exc:
            # Once per job and outage: later chunks find the first one still waiting.
            if len(pieces) == 1:
                log.warning(
                    "job %s: text held back until Redis answers: %s", job.id, exc, extra=extra
                )
            return
        if appended:
            slot.streamed_pieces += len(pieces)
            slot.streamed_bytes += len(text.encode())
            return
        # Another consumer took the job over (or ended it) while this one was stalled.
        # The generation goes on: the final write decides which answer stands.
        slot.streaming = False
        log.debug("job %s: attempt %d overtaken, not streamed", job.id, slot.attempt, extra=extra)

    async def _after_failure(self, entry: Entry, job: Job, exc: Exception, attempts: int) -> bool:
        """End the job or set it up for another attempt; ``True`` to run it again."""
        known = engine_error(exc)
        plan = policy.after_failure(
            error_type=error_type(exc),
            message=known.message if known else f"{type(exc).__name__}: {exc}",
            attempts=attempts,
            max_attempts=self.settings.max_attempts,
            base_s=self.settings.retry_backoff_s,
            cap_s=self.settings.max_retry_backoff_s,
            deadline=job.deadline,
            now=time.time(),
        )
        if isinstance(plan, policy.GiveUp):
            log.debug(
                "job %s failed: %s: %s",
                job.id,
                plan.type.value,
                plan.message,
                extra=job_extra(job.id, job.adapter_name),
            )
            error = JobError(type=plan.type, message=plan.message)
            await self._end_job(entry, job, JobStatus.FAILED, error=error)
            return False
        log.warning(
            "job %s attempt %d failed, retrying in %.1fs: %r",
            job.id,
            attempts,
            plan.delay_s,
            exc,
            extra=job_extra(job.id, job.adapter_name),
        )
        await self._requeue(entry, job)
        await asyncio.sleep(plan.delay_s)
        return True

    async def _requeue(self, entry: Entry, job: Job) -> None:
        """Move the job's record back to ``queued`` (its attempts kept)."""
        await self.store.mark(
            str(job.id),
            JobStatus.QUEUED,
            entry_id=entry.entry_id,
            adapter=job.adapter_name,
            consumer=self.consumer,
            created_at=policy.created_at_of(entry.entry_id),
            ttl_s=self.settings.job_ttl_s,
            max_attempts=self.settings.max_attempts,
        )

    async def _end_job(
        self,
        entry: Entry,
        job: Job,
        status: JobStatus,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
        slot: InFlight | None = None,
    ) -> None:
        """End a parsed job; ``slot``: the attempt that made ``result``, if one ran."""
        await self._end(
            entry,
            str(job.id),
            job,
            status,
            result=result,
            error=error,
            payload=entry.fields.get(policy.JOB_FIELD, ""),
            slot=slot,
        )

    async def _end(
        self,
        entry: Entry,
        job_id: str,
        job: Job | None,
        status: JobStatus,
        *,
        payload: str,
        result: JobResult | None = None,
        error: JobError | None = None,
        slot: InFlight | None = None,
    ) -> None:
        """Store the final status (once), its event, a dead letter if due; acknowledge.

        With the ``slot`` of the attempt that made ``result``, the text its events stream
        still lacks (held back by an outage) goes in before the end.
        """
        fields = {"worker": self.consumer}  # the consumer that ended it (wire name since v1.0)
        if result is not None:
            fields["result"] = codec.dumps(result)
        if error is not None:
            fields["error"] = codec.dumps(error)
        if job is not None and job.metadata is not None:
            fields["metadata"] = codec.dumps(job.metadata)
        text = slot.final_text(result.text) if slot and result else ""
        write = FinalWrite(
            entry_id=entry.entry_id,
            job_id=job_id,
            status=status,
            adapter=job.adapter_name if job else None,
            created_at=policy.created_at_of(entry.entry_id),
            ttl_s=(job.result_ttl if job and job.result_ttl else self.settings.result_ttl_s),
            fields=fields,
            dead_payload=(
                policy.dead_copy(payload, self.settings.dead_payload_max_bytes)
                if policy.dead_letters(status)
                else None
            ),
            dead_error=codec.dumps(error) if error else "",
            text=text,
            attempt=slot.attempt if slot and text else None,
        )
        # Kept in memory through an outage: a finished generation is not run again.
        written = await until_reachable(partial(self.store.finish, write), f"job {job_id}")
        extra = job_extra(job_id, job.adapter_name if job else None)
        if not written:
            log.debug(
                "job %s: final status not stored (already final, or id refused)",
                job_id,
                extra=extra,
            )
        else:
            log.debug("job %s ended %s", job_id, status.value, extra=extra)
            if self.observer is not None:
                self.observer.job_finished(job, status, result=result, error=error)


def _error(type: ErrorType, message: str) -> JobError:
    return JobError(type=type, message=message)


def _cancelled() -> JobError:
    return _error(ErrorType.CANCELLED, "cancelled before it started")


def _result(
    job: Job, output: GenerationOutput | None, text: str, entry: Entry, started_at: float
) -> JobResult:
    """The result record of a generation (``output`` is ``None`` when it was cancelled)."""
    now = time.time()
    created_at = policy.created_at_of(entry.entry_id)
    return JobResult(
        text=text,
        finish_reason=output.finish_reason if output else "cancelled",
        prompt_tokens=output.prompt_tokens if output else 0,
        completion_tokens=output.completion_tokens if output else 0,
        adapter=job.adapter_name,
        adapter_version=output.adapter_version if output else None,
        replica=output.replica if output else None,
        logprobs=output.logprobs if output else None,
        timings=Timings(
            queue_ms=round((started_at - created_at) * 1000, 3),
            generation_ms=round(output.generation_ms, 3) if output else None,
            total_ms=round((now - created_at) * 1000, 3),
        ),
    )
