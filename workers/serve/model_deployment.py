"""LoRAModel: one base model and its adapters per replica, served through Ray Serve.

A thin shell around a :class:`workers.engine.backend.Backend` (``LORAQ_ENGINE``: the HF
engine, or vLLM), which batches requests of different adapters into one forward pass and
keeps their host and device tiers. Adapter names are resolved here, above the backend
(:mod:`workers.serve.replica_adapters`): the catalogue, the object store, the node's disk
tier.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from ray import serve

from producer.connection import async_client
from schemas import ErrorType, Keys
from schemas.records import TokenLogprob
from schemas.replicas import ReplicaHeartbeat, ReplicaStats
from workers.adapters.resolved import name_of
from workers.engine.backend import Backend
from workers.engine.factory import build_backend
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest, TextDelta
from workers.logs import configure_logging
from workers.serve.autoscaling import read_backlog
from workers.serve.chunks import ChunkBuffer
from workers.serve.heartbeat import HeartbeatWriter, heartbeat_of
from workers.serve.in_flight import AdaptersInFlight
from workers.serve.metrics import ModelMetrics
from workers.serve.periodic import Periodic
from workers.serve.replica_adapters import ReplicaAdapters, resolver_of
from workers.serve.start_record import start_recorded
from workers.serve.stream_groups import Batch, StreamGroups
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

# How often a replica looks for a change of its device adapters (and beats if one came).
DEVICE_WATCH_S = 0.25
# How often a replica asks its backend whether it can still run rows.
BACKEND_WATCH_S = 1.0


class LoRAModel:
    """Generation for any registered adapter (or the base model) on this replica.

    The replica's adapter admission is the engine's adapter store: it pins, loads and
    evicts, and holds a request whose adapter has no slot yet. What it holds is published
    to those who place requests: the device adapters and slots in the heartbeat (the
    consumers' planners) and in Serve's routing stats (the router, every second), each
    output's replica and device adapters (the consumer that sent it, at once), and the
    adapters of the requests held here (``adapters_in_flight``).
    """

    def __init__(self, settings: WorkerSettings) -> None:
        configure_logging(settings)
        self.settings = settings
        self.replica = serve.get_replica_context().replica_tag
        # A start that raises is counted with its cause in {P}:model:starts, where
        # operators and ``loraq serve`` see it (Serve only logs it, and retries).
        with start_recorded(settings, self.replica):
            self._start(settings)

    def _start(self, settings: WorkerSettings) -> None:
        # Built on the replica's event loop: the vLLM backend binds to the loop it is built
        # on. The factory imports the backend here, in the replica: the process that
        # deploys the app (``loraq serve``, ``loraq demo``) never loads torch,
        # transformers or PEFT, and prints none of their import-time warnings.
        self.engine: Backend = build_backend(settings)
        self.in_flight = AdaptersInFlight()
        self.groups = StreamGroups()
        self.metrics = ModelMetrics(settings.app_name, self.replica)
        self.engine.observe(self.metrics)
        self._metrics_reporter = Periodic(
            self._report_metrics, settings.metrics_interval_s, f"metrics of {self.replica}"
        )
        self._metrics_reporter.start()

        # Serve runs the constructor on the replica's event loop: the heartbeat can start.
        self._redis = async_client(settings)
        self._keys = Keys(settings.prefix)
        self.heartbeat = HeartbeatWriter(
            self._redis, self._keys, self._heartbeat, settings.heartbeat_s
        )
        self.heartbeat.start()
        self._beat_adapters: frozenset[str] = frozenset()  # device adapters of the last beat
        self._device_watch = Periodic(
            self._beat_if_changed, DEVICE_WATCH_S, f"device adapters of {self.replica}"
        )
        self._device_watch.start()
        self._backend_watch = Periodic(
            self._exit_if_backend_lost, BACKEND_WATCH_S, f"backend of {self.replica}"
        )
        self._backend_watch.start()
        self.adapters = ReplicaAdapters(resolver_of(settings, self._redis, self._keys), self.engine)
        self._registry_sync = Periodic(
            self.adapters.sync, settings.registry_sync_s, f"adapter versions of {self.replica}"
        )
        self._registry_sync.start()

    async def prefetch(self, adapters: list[str], target_replica: str | None = None) -> None:
        """Warm ``adapters`` on this replica ahead of their jobs (host tier, free slots).

        A hint from the consumer's scheduler (``target_replica`` is the replica it meant;
        Serve's router chose this one): cheap, returns before the downloads and loads
        are done, and never raises for a bad or unknown name.
        """
        self.adapters.prefetch(adapters)

    async def _beat_if_changed(self) -> None:
        """Beat now when the device adapters changed since the last beat: the planners
        place jobs by them, and a beat every ``heartbeat_s`` alone is seconds late."""
        if frozenset(self._loaded_names()) != self._beat_adapters:
            await self.heartbeat.beat()

    async def _exit_if_backend_lost(self) -> None:
        """End this replica's process once its backend can run no more rows (vLLM's engine
        core died), so that Serve starts another at once. Serve's own health check takes
        three failed probes (30 s by default), while its router sends more jobs to a
        replica that fails them fast. The jobs held here end as a killed replica's do:
        ``model_unavailable``, and run again elsewhere."""
        try:
            self.engine.check_health()
        except EngineError as exc:
            log.error("model replica %s exits, its backend is gone: %s", self.replica, exc)
            os._exit(1)

    def _heartbeat(self) -> ReplicaHeartbeat:
        adapters = self._loaded_names()
        self._beat_adapters = frozenset(adapters)
        return heartbeat_of(
            replica=self.replica,
            node=ray.get_runtime_context().get_node_id(),
            adapters=adapters,
            stats=self.engine.backend_stats(),
            disk=self.adapters.resolver.disk_stats(),
            interval_s=self.settings.heartbeat_s,
            now=time.time(),
            slots=self.settings.max_adapters_per_replica,
            adapters_in_flight=self.in_flight.names(),
        )

    def record_routing_stats(self) -> dict[str, Any]:
        """What Serve's router reads of this replica (``routing_stats``, every
        ``ROUTING_STATS_S``): its device adapters and those of its requests."""
        return {"adapters": [*self._loaded_names(), *self.in_flight.names()]}

    def _loaded_names(self, *, host: bool = False) -> list[str]:
        """The adapters on the device (or in host memory), each name once whatever its
        versions, least recently used first."""
        keys = self.engine.host_adapters() if host else self.engine.loaded_adapters()
        return list(dict.fromkeys(name_of(key) for key in keys))

    @contextlib.asynccontextmanager
    async def _routed(self, request: GenerationRequest) -> AsyncIterator[Callable[[], None]]:
        """Resolve the request's adapter (its files held on this node while it runs) and
        count it in flight here until its row ends (call what this yields then: the
        output reaches the consumer, which frees the adapter's slot lease, before this
        context exits)."""
        model_id = serve.get_multiplexed_model_id()
        if model_id and model_id != (request.adapter or ""):
            raise EngineError(
                ErrorType.VALIDATION,
                f"multiplexed model id {model_id!r} differs from the request's adapter "
                f"{request.adapter!r}",
            )
        with self.in_flight.hold(request.adapter) as row_done:
            if not request.adapter:
                yield row_done
                return
            async with self.adapters.use(request.adapter) as resolved:
                request.resolved = resolved
                yield row_done

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        """The finished generation of ``request``."""
        async with self._routed(request):
            output = await self.engine.generate(request)
        return self._signed(output)

    def _signed(self, output: GenerationOutput) -> GenerationOutput:
        """``output`` with this replica's id and device adapters: the consumer that sent
        the request learns what the replica holds now, without waiting for a heartbeat."""
        output.replica = self.replica
        output.device_adapters = self._loaded_names()
        return output

    async def stream(
        self, request: GenerationRequest, *, delta_logprobs: bool = True
    ) -> AsyncIterator[TextDelta | GenerationOutput]:
        """Text chunks of ``request`` as it generates, then its output (last). A request
        that asks for log-probabilities has each chunk carry those of its tokens, unless
        ``delta_logprobs`` is false (the output holds them all anyway)."""
        async with self._routed(request) as row_done:
            async for item in self._chunks(request, row_done, delta_logprobs=delta_logprobs):
                yield item

    async def _chunks(
        self, request: GenerationRequest, row_done: Callable[[], None], *, delta_logprobs: bool
    ) -> AsyncIterator[TextDelta | GenerationOutput]:
        # The entries of the text the buffer holds (None: the deltas carry none).
        held: list[TokenLogprob] | None = None
        chunks = ChunkBuffer(
            interval_s=self.settings.stream_chunk_ms / 1000,
            min_deltas=self.settings.stream_chunk_tokens,
            max_chars=self.settings.stream_chunk_chars,
            now=time.monotonic(),
        )
        # Leaving this generator early (the caller went away) cancels the engine's row.
        async for item in self.engine.stream(request):
            if isinstance(item, GenerationOutput):
                row_done()
                rest = chunks.flush()
                if rest:
                    yield TextDelta(rest, held)
                yield self._signed(item)
                return
            if item.logprobs is not None and delta_logprobs:
                held = held if held is not None else []
                held.extend(item.logprobs)
            chunk = chunks.add(item.text, time.monotonic())
            if chunk:
                yield TextDelta(chunk, held)
                held = None

    async def stream_many(
        self,
        requests: list[GenerationRequest],
        call_id: str,
        target_replica: str | None = None,
    ) -> AsyncIterator[str | Batch]:
        """The requests of one grouped call (a consumer's), each streamed as by
        :meth:`stream`: this replica's id, then batches of ``(index, item)`` as they come
        (:mod:`workers.serve.stream_groups`). ``target_replica`` is for the router only.
        """
        # A job's result holds its log-probabilities; its text chunks need none.
        streams = [self.stream(request, delta_logprobs=False) for request in requests]
        async for message in self.groups.run(call_id, self.replica, streams):
            yield message

    async def cancel(self, call_id: str, index: int, target_replica: str | None = None) -> bool:
        """Stop request ``index`` of the grouped call ``call_id`` (its row leaves the batch
        at the next step); ``False`` when it does not run here. ``target_replica`` routes
        the call to the replica that serves the group."""
        return self.groups.cancel(call_id, index)

    async def stats(self) -> dict[str, Any]:
        """This replica's id, its warm adapters and the engine's counters
        (:class:`ReplicaStats`, flat by name; read back with ``ReplicaStats.model_validate``)."""
        return ReplicaStats(
            replica=self.replica,
            # The process, for operators (and the chaos tests that kill it).
            pid=os.getpid(),
            adapters=self._loaded_names(),
            host_adapters=self._loaded_names(host=True),
            disk=self.adapters.resolver.disk_stats(),
            max_adapters_in_flight=self.in_flight.max_distinct,
            group_calls=self.groups.counters.calls,
            group_requests=self.groups.counters.requests,
            group_cancels=self.groups.counters.cancels,
            backend=self.engine.backend_stats(),
        ).model_dump()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The queue backlog, for the backlog autoscaler (Serve calls this only when the
        deployment autoscales; see :mod:`workers.serve.autoscaling`)."""
        return await read_backlog(self._redis, self._keys)

    async def _report_metrics(self) -> None:
        self.metrics.report(
            self.engine.backend_stats(), time.monotonic(), disk=self.adapters.resolver.disk_stats()
        )

    async def __del__(self) -> None:
        await self._backend_watch.stop()  # first: a closed backend is not a lost one
        await self._device_watch.stop()
        await self._metrics_reporter.stop()
        await self._registry_sync.stop()
        await self.heartbeat.stop()
        await self._redis.aclose()
        await self.engine.close()
        self.adapters.resolver.close()
