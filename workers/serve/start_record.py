"""``{P}:model:starts``: each model replica's start, counted where operators can see it.

A replica whose start raises adds one failure and its cause (one line); a replica that
starts sets the count back to 0. Serve retries a failed replica without end once the
deployment has run (its own bound holds only for a first deploy), so this count is what
tells ``loraq serve``, ``/readyz`` and ``loraq top`` that the model cannot start.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import redis

from producer.connection import sync_client
from schemas import Keys
from schemas.model_starts import StartFailures, cause_of
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def start_recorded(settings: WorkerSettings, replica: str) -> Iterator[None]:
    """Count the start of ``replica`` that runs inside: a failure (the exception is
    re-raised as it was) or a success. Redis being away costs a warning, never the
    start's own outcome."""
    keys = Keys(settings.prefix)
    try:
        yield
    except Exception as exc:
        cause = cause_of(exc)
        _write(settings, "failed start", lambda redis: record_failure(redis, keys, replica, cause))
        raise
    _write(settings, "start", lambda client: record_started(client, keys))


def record_failure(client: redis.Redis, keys: Keys, replica: str, cause: str) -> None:
    """One more failed start, by ``replica``, because of ``cause`` (one round trip; no
    transaction, which a Cluster client's pipeline may not offer: a reader between the
    two commands sees the new count with the cause before it, which is harmless)."""
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.model_starts, "failures", 1)
    pipe.hset(keys.model_starts, mapping={"cause": cause, "replica": replica, "ts": time.time()})
    pipe.execute()


def record_started(client: redis.Redis, keys: Keys) -> None:
    """A replica started: the failures before it no longer stop the application."""
    client.hset(keys.model_starts, "failures", 0)


def read_failures(client: redis.Redis, keys: Keys) -> StartFailures | None:
    """The record, ``None`` when no replica has started or failed yet."""
    return StartFailures.from_hash(client.hgetall(keys.model_starts))


def clear_failures(client: redis.Redis, keys: Keys) -> None:
    """Forget the failures of an earlier deployment (a new one counts its own)."""
    client.delete(keys.model_starts)


def _write(settings: WorkerSettings, what: str, write: Callable[[redis.Redis], None]) -> None:
    try:
        with contextlib.closing(sync_client(settings)) as client:
            write(client)
    except (redis.RedisError, OSError) as exc:
        log.warning("could not record this replica's %s in Redis: %s", what, exc)
