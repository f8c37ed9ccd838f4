"""Pure parts of waiting: following jobs' events streams with XREAD, and reading records.

Shared by the sync and the async producer; nothing here talks to Redis. A waiter reads
each ``{P}:job:{id}:events`` stream from ``0-0`` and follows the last ID it saw, so a job
that ended before the wait began answers at once and no completion can be missed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from producer.errors import JobTimeoutError
from schemas.codec import as_text
from schemas.keys import Keys
from schemas.records import JobEvent, JobRecord

log = logging.getLogger(__name__)

# The longest single XREAD BLOCK: a dead connection is noticed within this, and it stays
# below the socket timeout (which would otherwise cut a blocking read short).
MAX_BLOCK_SLICE_S = 5.0


def block_slice_s(connection_kwargs: Mapping[str, Any]) -> float:
    """How long one blocking read may last on a client with these connection kwargs."""
    socket_timeout = connection_kwargs.get("socket_timeout")
    if socket_timeout is None:
        return MAX_BLOCK_SLICE_S
    return max(0.001, min(MAX_BLOCK_SLICE_S, float(socket_timeout) / 2))


def parse_record(job_id: str, fields: Mapping[Any, Any]) -> JobRecord | None:
    """A job record from HGETALL output; ``None`` when the hash does not exist."""
    return JobRecord.from_hash(job_id, fields) if fields else None


# HMGET of a record: whether it exists (every record has a status), and who owns it.
OWNER_FIELDS = ["status", "owner"]


def parse_owner(reply: Sequence[Any]) -> tuple[bool, str | None]:
    """The reply to HMGET :data:`OWNER_FIELDS`: whether the record exists, and its
    ``owner`` (a digest of the HTTP API key that submitted the job; ``None``: none)."""
    status, owner = reply
    return status is not None, None if owner is None else as_text(owner)


def final_record(job_id: str, fields: Mapping[Any, Any], final: JobEvent) -> JobRecord:
    """The record of a job whose final event was seen.

    The record normally outlives nothing but its TTL; should it be gone (it expired in
    between), the final event still says how the job ended.
    """
    record = parse_record(job_id, fields)
    if record is None:
        assert final.status is not None
        return JobRecord(id=job_id, status=final.status, finished_at=final.ts)
    return record


@dataclass(frozen=True)
class StreamRead:
    """Arguments of the next ``XREAD BLOCK``."""

    streams: dict[str, str]
    block_ms: int


class EventFollower:
    """Where each followed job's events stream has been read up to, and until when to wait.

    A job stops being followed once its final event is seen. ``timeout_s=None`` waits for
    ever, in reads of at most ``slice_s`` each.
    """

    def __init__(
        self,
        keys: Keys,
        job_ids: Iterable[str],
        *,
        timeout_s: float | None,
        slice_s: float = MAX_BLOCK_SLICE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._job_of = {keys.job_events(job_id): job_id for job_id in job_ids}
        self._last = dict.fromkeys(self._job_of, "0-0")
        self._timeout_s = timeout_s
        self._slice_s = slice_s
        self._clock = clock
        self._deadline = None if timeout_s is None else clock() + timeout_s

    @property
    def pending(self) -> list[str]:
        """Ids of the jobs whose final event has not been seen yet."""
        return [self._job_of[key] for key in self._last]

    def next_read(self) -> StreamRead | None:
        """The next read, ``None`` when every job has ended; raises :class:`JobTimeoutError`."""
        if not self._last:
            return None
        wait_s = self._slice_s
        if self._deadline is not None:
            wait_s = min(wait_s, self._deadline - self._clock())
        # BLOCK 0 would mean "for ever": under a millisecond left is a timeout.
        if wait_s < 0.001:
            assert self._timeout_s is not None
            raise JobTimeoutError(self.pending, {}, self._timeout_s)
        return StreamRead(dict(self._last), int(wait_s * 1000))

    def feed(self, reply: Any) -> list[tuple[str, JobEvent]]:
        """Take an XREAD reply (RESP2 list or RESP3 map); return ``(job id, event)`` pairs."""
        items = reply.items() if isinstance(reply, Mapping) else (reply or [])
        events: list[tuple[str, JobEvent]] = []
        for raw_key, entries in items:
            key = as_text(raw_key)
            for entry_id, fields in entries:
                self._last[key] = as_text(entry_id)
                event = _parse_event(key, entry_id, fields)
                if event is None:
                    continue
                events.append((self._job_of[key], event))
                if event.is_final:
                    del self._last[key]
                    break
        return events


def _parse_event(key: str, entry_id: Any, fields: Mapping[Any, Any]) -> JobEvent | None:
    try:
        return JobEvent.from_fields(fields)
    except ValidationError as exc:
        # A malformed entry from some other writer must not end the wait; the consumer's
        # final entry still comes.
        log.warning("skipping malformed event %s %s: %s", key, as_text(entry_id), exc)
        return None


def final_status(events: Iterable[tuple[str, JobEvent]]) -> dict[str, JobEvent]:
    """The final event of each job that ended in ``events``."""
    return {job_id: event for job_id, event in events if event.is_final}
