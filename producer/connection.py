"""Redis clients built from :class:`ClientSettings`: bounded timeouts and retries, no hangs.

Every part of loraq (producers, the CLI, the workers, the gateway) gets its clients here,
in the mode the settings name (:class:`~producer.redis_modes.RedisMode`): one server by
URL, the primary a set of sentinels names, or a Redis Cluster. Each is redis-py's own
client for that mode, so scripts, pipelines and blocking reads follow a failover or a
moved slot the way redis-py does it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url

from producer.errors import mask_url
from producer.redis_modes import RedisMode, parse_sentinels
from producer.settings import ClientSettings

# Backoff between retries of a failed connection: 0.1 s, 0.2 s, 0.4 s ... at most 2 s.
_BACKOFF_BASE_S = 0.1
_BACKOFF_CAP_S = 2.0
# What the URL may set for the primary in Sentinel mode: the sentinels give host and port.
_PRIMARY_URL_OPTIONS = ("db", "username", "password")

AnyClient = redis.Redis | redis.asyncio.Redis


def _options(settings: ClientSettings) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S)


def _sentinel_args(settings: ClientSettings) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels' addresses and the options of the connections to them."""
    password = settings.redis_sentinel_password
    sentinel_kwargs = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        "password": password.get_secret_value() if password else None,
    }
    return parse_sentinels(settings.redis_sentinels or ""), sentinel_kwargs


def primary_options(settings: ClientSettings) -> dict[str, Any]:
    """Database, user, password and TLS (``rediss://``, ``ssl_*`` query options) of the
    primary in Sentinel mode, from the URL when one is set."""
    if not settings.redis_url:
        return {}
    parsed: dict[str, Any] = cast(Any, parse_url)(settings.redis_url)
    options = {
        name: value
        for name, value in parsed.items()
        if value is not None and (name in _PRIMARY_URL_OPTIONS or name.startswith("ssl_"))
    }
    if parsed.get("connection_class") is redis.connection.SSLConnection:
        options["ssl"] = True  # the sentinel pool then makes TLS connections to the primary
    return options


def sync_client(settings: ClientSettings) -> redis.Redis:
    """A client in the settings' mode; it connects on first use."""
    retry = redis.retry.Retry(_backoff(), settings.connect_retries)
    mode = settings.redis_mode
    if mode is RedisMode.SENTINEL:
        addresses, sentinel_kwargs = _sentinel_args(settings)
        sentinel = redis.sentinel.Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)
        primary: redis.Redis = sentinel.master_for(
            settings.redis_sentinel_service,
            redis_class=redis.Redis,
            retry=retry,
            **_options(settings),
            **primary_options(settings),
        )
        return primary
    if mode is RedisMode.CLUSTER:
        cluster = redis.cluster.RedisCluster.from_url(
            settings.effective_redis_url, retry=retry, **_options(settings)
        )
        # The cluster client has every command loraq sends, with the same signatures
        # (keys of one queue share a slot): callers keep one client type.
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(settings.effective_redis_url, retry=retry, **_options(settings))


def async_client(settings: ClientSettings) -> redis.asyncio.Redis:
    """An asyncio client in the settings' mode; it connects on first use."""
    retry = redis.asyncio.retry.Retry(_backoff(), settings.connect_retries)
    mode = settings.redis_mode
    if mode is RedisMode.SENTINEL:
        addresses, sentinel_kwargs = _sentinel_args(settings)
        sentinel = redis.asyncio.sentinel.Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)
        primary: redis.asyncio.Redis = sentinel.master_for(
            settings.redis_sentinel_service,
            redis_class=redis.asyncio.Redis,
            retry=retry,
            **_options(settings),
            **primary_options(settings),
        )
        return primary
    if mode is RedisMode.CLUSTER:
        cluster = redis.asyncio.cluster.RedisCluster.from_url(
            settings.effective_redis_url, retry=retry, **_options(settings)
        )
        return cast(redis.asyncio.Redis, cluster)  # see sync_client
    return redis.asyncio.Redis.from_url(
        settings.effective_redis_url, retry=retry, **_options(settings)
    )


def connection_kwargs(client: AnyClient) -> Mapping[str, Any]:
    """The options every connection of ``client`` is made with (timeouts, host, db)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        found: Mapping[str, Any] = pool.connection_kwargs
        return found
    # A cluster client has a pool per node, all made with its own kwargs.
    return cast(Mapping[str, Any], cast(Any, client).get_connection_kwargs())


def describe(settings: ClientSettings) -> str:
    """Where the settings lead, fit for logs and messages (no password)."""
    mode = settings.redis_mode
    if mode is RedisMode.SENTINEL:
        return (
            f"sentinel service {settings.redis_sentinel_service!r} via {settings.redis_sentinels}"
        )
    url = mask_url(settings.effective_redis_url)
    return f"cluster via {url}" if mode is RedisMode.CLUSTER else url
