"""Redis clients built from :class:`ClientSettings`: bounded timeouts and retries, no hangs."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialBackoff

from producer.settings import ClientSettings

# Backoff between retries of a failed connection: 0.1 s, 0.2 s, 0.4 s ... at most 2 s.
_BACKOFF_BASE_S = 0.1
_BACKOFF_CAP_S = 2.0


def _options(settings: ClientSettings) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }


def sync_client(settings: ClientSettings) -> redis.Redis:
    """A client for ``settings.effective_redis_url``; it connects on first use."""
    backoff = ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S)
    return redis.Redis.from_url(
        settings.effective_redis_url,
        retry=redis.retry.Retry(backoff, settings.connect_retries),
        **_options(settings),
    )


def async_client(settings: ClientSettings) -> redis.asyncio.Redis:
    """An asyncio client for ``settings.effective_redis_url``; it connects on first use."""
    backoff = ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S)
    return redis.asyncio.Redis.from_url(
        settings.effective_redis_url,
        retry=redis.asyncio.retry.Retry(backoff, settings.connect_retries),
        **_options(settings),
    )
