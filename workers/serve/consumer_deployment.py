"""JobConsumer: the Serve deployment that runs one queue consumer loop per replica."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from producer.connection import async_client
from producer.durability import Durability
from schemas import Keys
from schemas.replicas import ConsumerHeartbeat
from workers.logs import configure_logging
from workers.queue.consumer import QueueConsumer
from workers.queue.runner import JobRunner
from workers.queue.store import JobStore
from workers.queue.tenant_labels import TenantLabels
from workers.serve.dispatch import ServeDispatcher
from workers.serve.heartbeat import HeartbeatWriter
from workers.serve.metrics import ConsumerMetrics
from workers.serve.periodic import Periodic
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

# Shutdown keeps this much of Serve's graceful timeout for itself: Serve's drain wait
# (graceful_shutdown_wait_loop_s, 2 s) runs before __del__, then closing connections.
SHUTDOWN_MARGIN_S = 4.0


def consumer_name(app_name: str, rank: Any) -> str:
    """A stable consumer name: the same for the replica that replaces a dead one.

    Serve keeps replica ranks 0..n-1, so a restarted replica takes over the name, and
    with it the pending entries, of the one it replaces.
    """
    return f"{app_name}-{getattr(rank, 'rank', rank)}"


class JobConsumer:
    """Pulls jobs from Redis, runs them on LoRAModel, stores their results.

    The loop runs in the background, not as a Serve request: ``check_health`` reports it
    dead, and shutdown gives in-flight jobs the graceful timeout to finish.
    """

    def __init__(self, model: DeploymentHandle[Any], settings: WorkerSettings) -> None:
        # Serve runs the constructor on the replica's event loop: the loop can start here.
        configure_logging(settings)
        context = serve.get_replica_context()
        self.settings = settings
        self.name = consumer_name(settings.app_name, context.rank)
        # Retries on a broken connection: after a Redis restart the first command on a
        # stale pooled connection reconnects instead of failing its job's step.
        self.client = async_client(settings)
        store = JobStore(
            self.client,
            Keys(settings.prefix),
            events_maxlen=settings.events_maxlen,
            dead_maxlen=settings.dead_maxlen,
            durability=Durability.of(settings),
        )
        dispatcher = ServeDispatcher(
            model,
            affinity=settings.affinity_routing,
            max_group=settings.max_dispatch_group,
            group_wait_ms=settings.dispatch_wait_ms,
        )
        # One chooser of tenant labels for the window's figures and the metrics.
        labels = TenantLabels(settings.tenant_weight_map, settings.tenant_labels_max)
        self.metrics = ConsumerMetrics(settings.app_name, self.name, labels)
        runner = JobRunner(store, dispatcher, settings, self.name, observer=self.metrics)
        self.dispatcher = dispatcher
        self.consumer = QueueConsumer(
            store, runner, settings, self.name, prefetcher=dispatcher, tenant_labels=labels
        )
        self.consumer.start()
        self._metrics_reporter = Periodic(
            self._report_metrics, settings.metrics_interval_s, f"metrics of {self.name}"
        )
        self._metrics_reporter.start()
        self.heartbeat = HeartbeatWriter(
            self.client,
            store.keys,
            self._heartbeat,
            settings.heartbeat_s,
            hash_key=store.keys.consumers,
            model=ConsumerHeartbeat,
        )
        self.heartbeat.start()
        log.info("consumer %s reading %s", self.name, store.keys.jobs)

    def check_health(self) -> None:
        """Raise when the consumer loop has died (Serve then replaces the replica)."""
        self.consumer.raise_if_dead()

    async def stats(self) -> dict[str, Any]:
        """This consumer's name, process and counters."""
        batches, writes = self.consumer.store.write_batches
        return {
            "consumer": self.name,
            "pid": os.getpid(),
            **self.consumer.stats().as_fields(),
            "model_calls": self.dispatcher.calls,
            "redis_write_batches": batches,
            "redis_writes": writes,
        }

    def _heartbeat(self) -> ConsumerHeartbeat:
        stats = self.consumer.stats()
        window = stats.window
        return ConsumerHeartbeat(
            consumer=self.name,
            in_flight=stats.in_flight,
            window_depth=window.depth if window is not None else None,
            window_oldest_wait_s=window.oldest_wait_s if window is not None else None,
            window_max_wait_s=window.stats.max_wait_s if window is not None else None,
            replicas_known=window.replicas_known if window is not None else 0,
            tenants=window.tenants if window is not None else {},
            ts=time.time(),
            interval_s=self.settings.heartbeat_s,
        )

    async def _report_metrics(self) -> None:
        # One round trip per interval, whatever the job rate.
        backlog = await self.consumer.store.backlog()
        stats = self.consumer.stats()
        window = stats.window
        self.metrics.report(
            backlog,
            stats.in_flight,
            window_depth=window.depth if window is not None else 0,
            window_oldest_s=window.oldest_wait_s if window is not None else 0.0,
            tenants=window.tenants if window is not None else {},
        )

    async def __del__(self) -> None:
        await self._metrics_reporter.stop()
        await self.heartbeat.stop()
        timeout_s = max(0.0, self.settings.graceful_shutdown_timeout_s - SHUTDOWN_MARGIN_S)
        await self.consumer.stop(timeout_s)
        await self.client.aclose()
