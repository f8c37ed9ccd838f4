"""Start (or join) Ray, deploy the application, and take it all down again.

Used by ``loraq serve``, ``loraq demo``, the end-to-end tests and the benchmarks, so that
they all run the application the same way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import ray
import redis
from ray import serve
from ray.serve.handle import DeploymentHandle

from producer.connection import describe as redis_where
from producer.connection import sync_client
from producer.embedded import EmbeddedRedis, resolve_redis_url
from producer.redis_modes import RedisMode
from producer.settings import DEFAULT_REDIS_URL
from schemas import Keys
from schemas.model_starts import cause_of
from workers import preflight
from workers.adapters.registry import AdapterRegistry
from workers.app import CONSUMER_DEPLOYMENT, MODEL_DEPLOYMENT, build_app
from workers.serve.header_timeout import proxy_env
from workers.serve.replicas import replica_stats as replica_stats  # re-exported
from workers.serve.start_failure import StartFailed as StartFailed  # re-exported
from workers.serve.start_failure import gave_up, start_failure
from workers.serve.start_record import clear_failures, read_failures
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

# Serve's logger in the driver (its client: "Started Serve", "Application … is ready").
SERVE_LOGGER = "ray.serve"
PROXY_READY_ENV = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
PROXY_READY_S = 30.0


@dataclass
class Running:
    """A deployed application and what was started for it."""

    settings: WorkerSettings
    started_ray: bool
    embedded_redis: EmbeddedRedis | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> DeploymentHandle[Any]:
        """A handle to the LoRAModel deployment."""
        return serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=self.settings.app_name)

    @property
    def consumer(self) -> DeploymentHandle[Any]:
        """A handle to the JobConsumer deployment."""
        return serve.get_deployment_handle(CONSUMER_DEPLOYMENT, app_name=self.settings.app_name)


def cpus_needed(settings: WorkerSettings) -> float:
    """Ray CPUs the application asks for."""
    model_replicas = (
        settings.max_model_replicas if settings.autoscale else settings.num_model_replicas
    )
    return (
        settings.model_num_cpus * model_replicas
        + settings.consumer_num_cpus * settings.num_consumer_replicas
        + settings.gateway_num_cpus * settings.num_gateway_replicas
    )


def start_ray(
    settings: WorkerSettings, *, dashboard: bool = False, log_level: int = logging.INFO
) -> bool:
    """Join the cluster at ``RAY_ADDRESS``, or start a local one; ``True`` if started here.

    A local Ray gets at least as many logical CPUs as the application asks for: on a
    small machine fractional replicas share the cores rather than wait for them.
    ``log_level`` is that of Ray's own lines in this process.
    """
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=log_level)
        return False
    cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed(settings)))
    allow_slow_proxy_start()
    try:
        ray.init(
            num_cpus=cpus,
            include_dashboard=dashboard,
            log_to_driver=False,
            logging_level=log_level,
            _metrics_export_port=metrics_port(settings.metrics_export_port),
        )
    except Exception as exc:  # Ray raises plain Exception for a node that did not start
        raise StartFailed(f"Ray did not start: {cause_of(exc)}") from exc
    return True


def allow_slow_proxy_start() -> None:
    """Give Serve's HTTP proxy 30 s to start instead of 5, on a Ray started after this.

    Serve kills a proxy that is not ready within ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S``
    and ``serve.start()`` then fails with ``ActorDiedError``: on a busy two-core machine
    the proxy's worker process alone can take longer than 5 s. A local Ray's processes
    inherit this environment; a value the user set wins.
    """
    os.environ.setdefault(PROXY_READY_ENV, str(PROXY_READY_S))


def metrics_port(wanted: int) -> int | None:
    """``wanted`` if it is free, else ``None`` (Ray then picks a free port).

    Ray does not start at all when its metrics port is taken, and says only that the node
    timed out; a warning and another port are kinder.
    """
    if not wanted:
        return None
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", wanted))  # where Ray's exporter listens
        except OSError:
            log.warning("metrics port %d is taken; Ray picks a free one", wanted)
            return None
    return wanted


def metrics_urls() -> list[str]:
    """The Prometheus endpoint of every live Ray node (loraq's and Serve's metrics)."""
    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node["Alive"]
    ]


def http_options(settings: WorkerSettings) -> dict[str, Any]:
    """Serve's HTTP options for ``settings``: where the proxy listens, and how long it keeps
    an idle connection after a response (Serve's default, 90 s, lets a client that only
    holds connections open keep many)."""
    return {
        "host": settings.http_host,
        "port": settings.http_port,
        "keep_alive_timeout_s": settings.http_keep_alive_timeout_s,
    }


def serve_start_options(settings: WorkerSettings) -> dict[str, Any]:
    """``serve.start``'s keyword arguments for ``settings``: the HTTP options, and the
    variables that give Serve's proxy its request-header timeout (the proxy inherits the
    controller's environment; see :mod:`workers.serve.header_timeout`)."""
    env = proxy_env(settings.http_header_timeout_s)
    return {
        "http_options": http_options(settings),
        "controller_options": {"runtime_env": {"env_vars": env}},
    }


def deploy(
    settings: WorkerSettings, *, dashboard: bool = False, ray_log_level: int = logging.INFO
) -> Running:
    """Start what is missing (Redis, Ray) and deploy the application; returns once ready.

    Raises :class:`workers.preflight.SettingError` for a setting the replicas cannot start
    with (nothing started yet), and :class:`StartFailed` when a replica's start failed as
    many times as Serve retries it (everything started here stopped again); ``str()`` of
    either is one line that says why.

    ``ray_log_level`` is that of Ray's and Serve's own lines in this process (cluster
    started, application ready); the replicas log to their files whatever it is.
    """
    preflight.check(settings)  # before anything starts: a bad setting in one line
    embedded = None
    # Sentinels or a cluster are named on purpose: only one server by URL falls back.
    if settings.redis_mode is RedisMode.PLAIN:
        redis_url, embedded = resolve_redis_url(settings.redis_url, DEFAULT_REDIS_URL)
        settings = settings.model_copy(update={"redis_url": redis_url})
    running = Running(settings, started_ray=False, embedded_redis=embedded)
    # Serve's client logger does not propagate to Ray's: it has a level of its own.
    logging.getLogger(SERVE_LOGGER).setLevel(ray_log_level)
    try:
        running.started_ray = start_ray(settings, dashboard=dashboard, log_level=ray_log_level)
        serve.start(**serve_start_options(settings))
        _forget_start_failures(settings)
        serve.run(
            build_app(settings), name=settings.app_name, route_prefix=settings.http_route_prefix
        )
    except StartFailed:
        shutdown(running)
        raise
    except RuntimeError as error:
        # Serve gave up after its constructor retries; say why in one line, not its own
        # "Failed to update the deployments" and a traceback.
        cause = start_failure(settings.app_name)
        shutdown(running)
        if cause is None:
            raise
        raise StartFailed(cause) from error
    except BaseException:
        shutdown(running)
        raise
    running.notes = describe(running)
    return running


def _forget_start_failures(settings: WorkerSettings) -> None:
    """A new deployment counts its own failed starts, not an earlier one's."""
    try:
        with contextlib.closing(sync_client(settings)) as client:
            clear_failures(client, Keys(settings.prefix))
    except (redis.RedisError, OSError) as exc:
        log.warning("could not reset the count of failed starts: %s", exc)


def stopped_because(running: Running) -> str | None:
    """Why the deployed application must stop now, in one line (its model replicas failed
    to start ``LORAQ_MAX_START_FAILURES`` times in a row), or ``None``; Redis away reads
    as ``None`` (the replicas cannot record anything then either)."""
    settings = running.settings
    try:
        with contextlib.closing(sync_client(settings)) as client:
            record = read_failures(client, Keys(settings.prefix))
    except (redis.RedisError, OSError):
        return None
    return gave_up(record, settings.max_start_failures)


def describe(running: Running) -> list[str]:
    """Where everything is, one line each, for the log (passwords masked)."""
    settings = running.settings
    registry = AdapterRegistry(settings.adapters, settings.adapter_dir)
    where = "embedded server" if running.embedded_redis else "external server"
    return [
        f"redis: {redis_where(settings)} ({where}), prefix {settings.prefix!r}",
        f"queue: XADD {settings.prefix}:jobs * job '<json>'",
        f"http: http://{settings.http_host}:{settings.http_port}{settings.http_route_prefix} "
        "(OpenAPI at openapi.json, pages at docs)",
        f"ray: {'local cluster' if running.started_ray else 'joined ' + _ray_address()}",
        f"model: {settings.model} on {_model_replicas(settings)}, "
        f"{settings.num_consumer_replicas} consumer(s)",
        f"adapters: {', '.join(registry.names()) or '(none)'}",
        f"metrics: {' '.join(metrics_urls())}",
    ]


def _model_replicas(settings: WorkerSettings) -> str:
    if settings.autoscale:
        return (
            f"{settings.min_model_replicas}-{settings.max_model_replicas} replicas "
            f"(autoscaled on the queue backlog)"
        )
    return f"{settings.num_model_replicas} replica(s)"


def _ray_address() -> str:
    return os.environ.get("RAY_ADDRESS") or "running cluster"


def shutdown(running: Running) -> None:
    """Remove the application; stop Ray and the embedded Redis if they were started here.

    Deleting the application drains its replicas (in-flight jobs finish within the
    graceful shutdown timeout). A Ray started here then stops with Serve's controller and
    proxies in it, rather than through ``serve.shutdown()``: the controller ends that
    call by killing itself under the driver's pending calls, and Ray prints each of them
    to the user's terminal (``Task ServeController.graceful_shutdown failed … killed by
    ray.kill``).
    """
    with contextlib.ExitStack() as after:
        # Run last to first, each even if the one before raised.
        if running.embedded_redis is not None:
            after.callback(running.embedded_redis.stop)
        if running.started_ray:
            after.callback(ray.shutdown)
        if ray.is_initialized():
            serve.delete(running.settings.app_name)
