"""The Serve application, built from one settings object.

``build_app`` is what ``loraq serve`` runs; ``app_builder`` is the same for Serve's own
tools: ``serve run workers.app:app_builder`` or ``serve deploy serve_config.yaml``.
It stands above :mod:`workers.serve` and :mod:`workers.gateway` because it binds the
deployments of both; neither imports it.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from workers.gateway.deployment import Gateway
from workers.serve.autoscaling import autoscaling_config
from workers.serve.consumer_deployment import JobConsumer
from workers.serve.model_deployment import LoRAModel
from workers.serve.routing import AdapterAffinityRouter
from workers.serve.serve_logging import serve_logging_config
from workers.settings import WorkerSettings

MODEL_DEPLOYMENT = "LoRAModel"
CONSUMER_DEPLOYMENT = "JobConsumer"
GATEWAY_DEPLOYMENT = "Gateway"
# Import path of the adapter-affinity router; Serve imports it in every caller's process.
ROUTER = f"{AdapterAffinityRouter.__module__}.{AdapterAffinityRouter.__qualname__}"
# How often the router reads each model replica's adapters (its routing stats).
ROUTING_STATS_S = 1.0


def build_app(settings: WorkerSettings) -> Application:
    """The LoRAModel replicas, the JobConsumer replicas that feed them from Redis, and the
    HTTP gateway (the ingress) in front of both."""
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        logging_config=serve_logging_config(settings),
        **model_replicas(settings),
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": settings.model_num_cpus,
            "num_gpus": settings.model_num_gpus,
        },
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
        # A first deploy gives up after as many failed starts as loraq serve allows later.
        max_constructor_retry_count=settings.max_start_failures,
        # (mypy misreads this pydantic field of Ray's as a dict)
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER,  # type: ignore[arg-type]
            request_routing_stats_period_s=ROUTING_STATS_S,  # type: ignore[arg-type]
        ),
    )(LoRAModel)
    consumer = serve.deployment(
        name=CONSUMER_DEPLOYMENT,
        logging_config=serve_logging_config(settings),
        num_replicas=settings.num_consumer_replicas,
        ray_actor_options={"num_cpus": settings.consumer_num_cpus},
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
    )(JobConsumer)
    gateway = serve.deployment(
        name=GATEWAY_DEPLOYMENT,
        logging_config=serve_logging_config(settings),
        num_replicas=settings.num_gateway_replicas,
        max_ongoing_requests=settings.gateway_max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.gateway_num_cpus},
    )(Gateway)
    model_app = model.bind(settings)
    return gateway.bind(model_app, consumer.bind(model_app, settings), settings)


def model_replicas(settings: WorkerSettings) -> dict[str, Any]:
    """How many LoRAModel replicas run, and where: a fixed count or the backlog autoscaler
    (Serve refuses both at once), at most ``max_model_replicas_per_node`` on a node."""
    count: dict[str, Any] = (
        {"autoscaling_config": autoscaling_config(settings)}
        if settings.autoscale
        else {"num_replicas": settings.num_model_replicas}
    )
    return {**count, "max_replicas_per_node": settings.max_model_replicas_per_node}


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's app-builder entry point: settings from ``LORAQ_*`` and ``.env``, then ``args``.

    ``args`` are the ``args:`` of a Serve config file or ``key=value`` pairs of
    ``serve run``, named like the settings (``num_model_replicas: 2``).
    """
    return build_app(WorkerSettings(**args))
