"""Durable writes: ``WAIT`` for replicas after an enqueue or a final write.

Redis replicates asynchronously: a primary that dies right after a write may take it
along, and the replica promoted in its place never saw it. ``WAIT n timeout`` on the
connection that wrote blocks until ``n`` replicas acknowledged everything that connection
wrote, so it goes last in the very pipeline that carried the writes (a pooled client
could send a separate ``WAIT`` over another connection, which would wait for nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from producer.settings import ClientSettings


class ReplicationTimeoutError(TimeoutError):
    """Writes the primary took but fewer replicas than asked acknowledged in time.

    Nothing is undone: the writes stand on the primary, and a failover before they reach
    a replica may lose them. Submitting the same job ids again is safe (submission is
    idempotent); a consumer retries its final write until it is replicated. A subclass of
    the built-in ``TimeoutError``, so an ``OSError`` too: callers that ride out an outage
    ride this out the same way.

    ``ids``: the jobs written but not confirmed. From ``submit_many``, ``job_ids`` holds
    every job of the call in input order (the ids it assigned included) and ``confirmed``
    those replicated before: submit the call's jobs again with ``job_ids`` as their ids,
    never with new ones, or a job could run twice under two ids.
    """

    def __init__(self, ids: Sequence[str], *, acked: int, wanted: int, timeout_ms: int):
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        super().__init__(
            f"{acked} of {wanted} replicas acknowledged within {timeout_ms} ms the writes "
            f"of {shown}: written on the primary, not yet safe from a failover"
        )
        self.ids = list(ids)
        self.acked = acked
        self.wanted = wanted
        self.job_ids = list(ids)
        self.confirmed: list[str] = []

    def in_call(self, job_ids: Sequence[str], confirmed: Sequence[str]) -> None:
        """Name every job of the call this happened in, and those confirmed before it."""
        self.job_ids = list(job_ids)
        self.confirmed = list(confirmed)


class Pipeline(Protocol):
    """What :meth:`Durability.add_wait` needs of a redis-py pipeline (sync or async)."""

    def wait(self, num_replicas: int, timeout: int) -> Any: ...


@dataclass(frozen=True)
class Durability:
    """How many replicas must acknowledge a write, and how long they may take."""

    min_replicas: int = 0
    timeout_ms: int = 1000

    @classmethod
    def of(cls, settings: ClientSettings) -> Durability:
        return cls(settings.redis_min_replicas, settings.redis_wait_timeout_ms)

    @property
    def waits(self) -> bool:
        return self.min_replicas > 0

    def add_wait(self, pipe: Pipeline) -> None:
        """Queue ``WAIT`` as the pipeline's last command, when replicas are asked for."""
        if self.waits:
            pipe.wait(self.min_replicas, self.timeout_ms)

    def split(self, replies: list[Any], ids: Sequence[str]) -> list[Any]:
        """The replies of the writes, once ``WAIT`` (the last reply) says they are safe.

        Raises :class:`ReplicationTimeoutError` naming ``ids`` when fewer replicas than
        asked acknowledged; a failed ``WAIT`` (its reply an exception) is raised as is.
        """
        if not self.waits:
            return replies
        *writes, acked = replies
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < self.min_replicas:
            raise ReplicationTimeoutError(
                ids, acked=int(acked), wanted=self.min_replicas, timeout_ms=self.timeout_ms
            )
        return writes
