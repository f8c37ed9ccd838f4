"""The errors a producer raises, and how Redis failures become them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis.exceptions

from schemas.validation import InvalidJob

if TYPE_CHECKING:
    from schemas.records import JobRecord


class JobValidationError(InvalidJob):
    """A job the producer refused before writing anything; the message is ``field: problem``."""


class JobTooLargeError(JobValidationError):
    """A job over the protocol's ``MAX_JOB_BYTES`` as JSON; nothing was written."""


class LoraqConnectionError(ConnectionError):
    """Redis could not be reached (after the configured retries); names the URL."""


class JobTimeoutError(TimeoutError):
    """Jobs that did not end within the timeout.

    ``pending`` lists their ids; ``done`` holds the records of those that did end.
    """

    def __init__(self, pending: list[str], done: Mapping[str, JobRecord], timeout_s: float):
        shown = ", ".join(pending[:5]) + (
            f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        )
        super().__init__(f"job {shown} did not end within {timeout_s:g}s")
        self.pending = pending
        self.done = dict(done)


class SubmitError(RuntimeError):
    """Some jobs of a batch were refused by Redis (e.g. a key of the wrong type).

    Every id of the batch is in exactly one of ``submitted`` and ``failed`` (id -> reason).
    """

    def __init__(self, submitted: list[str], failed: dict[str, str]):
        first_id, first_reason = next(iter(failed.items()))
        super().__init__(
            f"{len(failed)} of {len(submitted) + len(failed)} jobs not submitted; "
            f"first: {first_id}: {first_reason}"
        )
        self.submitted = submitted
        self.failed = failed


class RateLimitedError(SubmitError):
    """Jobs were refused because their tenant is over its rate (``tenant_rate_per_s``);
    ``retry_after_s``: when a token is there again. Nothing was written for them."""

    def __init__(self, submitted: list[str], failed: dict[str, str], retry_after_s: float):
        super().__init__(submitted, failed)
        self.retry_after_s = retry_after_s


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def endpoint_of(connection_kwargs: Mapping[str, Any]) -> str:
    """A client's server as a URL without credentials, from its pool's connection kwargs."""
    if connection_kwargs.get("path"):
        return f"unix://{connection_kwargs['path']}"
    host = connection_kwargs.get("host", "localhost")
    port = connection_kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{connection_kwargs.get('db', 0)}"


@contextmanager
def connection_errors(url: str) -> Iterator[None]:
    """Turn redis-py's connection and socket-timeout errors into :class:`LoraqConnectionError`.

    redis-py has already retried by the time such an error gets here.
    """
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise LoraqConnectionError(f"cannot reach Redis at {mask_url(url)}: {exc}") from exc
