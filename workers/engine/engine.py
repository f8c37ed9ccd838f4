"""The engine: one base model, many adapters, mixed-adapter batches, for asyncio callers.

Threads: the caller's event loop only validates, waits and hands results out; one model
thread (:class:`ModelThread`) owns the model and runs adapter loads and decode steps; one
tokenizer thread encodes prompts. Rows report back with ``call_soon_threadsafe``, so the
engine serves any event loop, one after another (a Serve replica has one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

import torch

from schemas import ErrorType
from schemas.records import TokenLogprob
from schemas.response_format import constraint
from workers.adapters.cache import AdapterCachePolicy
from workers.adapters.host_cache import HostCachePolicy
from workers.adapters.host_store import HostStore
from workers.adapters.host_weights import read_adapter
from workers.adapters.manager import AdapterManager
from workers.adapters.resolved import ResolvedAdapter
from workers.adapters.validation import base_module_shapes
from workers.engine.backend import Backend, BackendStats, output_of, resolved_adapter
from workers.engine.batcher import Batcher
from workers.engine.cpu_layout import column_major_linears, pack_linears
from workers.engine.decode import DecodeBatch, FinishReason, Row
from workers.engine.decode_attention import use_decode_attention
from workers.engine.grammar import GrammarCompiler
from workers.engine.logprobs import token_logprobs
from workers.engine.lora_model import BASE_ADAPTER, MultiLoraModel
from workers.engine.model_loader import LoadedModel, load_model
from workers.engine.model_thread import ModelThread, TimelineEntry
from workers.engine.prompts import encode_request
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest, TextDelta
from workers.engine.sampling import RowSampler
from workers.engine.stats import EngineObserver, PassStats, backend_stats
from workers.engine.stopping import TextTracker
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import xgrammar

log = logging.getLogger(__name__)

Event = TextDelta | GenerationOutput | EngineError
Update = TextDelta | GenerationOutput


class Engine:
    """Generates text for requests of any adapter, batching them into shared passes."""

    def __init__(self, settings: WorkerSettings, loaded: LoadedModel) -> None:
        self._settings = settings
        self._tokenizer = loaded.tokenizer
        self._device = loaded.device
        if self._device.type == "cpu":
            # The few rows of a decode step multiply faster by packed or column-major
            # weights there; inductor lays out a compiled decoder's weights itself.
            if settings.cpu_packed_linears and not settings.compile_decoder:
                pack_linears(loaded.model)
            column_major_linears(loaded.model)
        if settings.decode_attention and not settings.compile_decoder:
            # A compiled decoder traces transformers' SDPA instead.
            use_decode_attention(loaded.model)
        # Module shapes of the bare base model, before PEFT wraps any layer.
        shapes = base_module_shapes(loaded.model)
        self._model = MultiLoraModel(
            loaded.model,
            capacity=settings.max_adapters_per_replica,
            cpu_kernel=settings.cpu_lora_kernel,
        )
        if settings.compile_decoder:
            self._model.compile_decoder()
        self._stats = PassStats()
        batch = DecodeBatch(
            self._model,
            self._tokenizer,
            device=self._device,
            on_pass=self._stats.record_pass,
            max_rows=settings.max_batch_size,
            # The longest prompt, every new token, and the column the last one is fed at.
            max_length=settings.max_input_tokens + settings.max_new_tokens + 1,
        )
        batcher: Batcher[Row] = Batcher(
            max_batch_size=settings.max_batch_size, batch_wait_ms=settings.batch_wait_ms
        )
        self._model_thread = ModelThread(batch, batcher)
        self._eos_ids = batch.eos_ids
        # The logits' width, which may pad past the tokenizer's vocabulary.
        head = loaded.model.get_output_embeddings()  # type: ignore[no-untyped-call]
        self._vocab_size = int(head.weight.shape[0])
        self._grammars: GrammarCompiler | None = None  # built for the first constrained job
        host = HostStore(
            HostCachePolicy(settings.adapter_host_cache_mb * 2**20),
            functools.partial(
                read_adapter,
                shapes=shapes,
                max_rank=settings.max_lora_rank,
                pin_memory=self._device.type == "cuda",
            ),
        )
        self._adapters = AdapterManager(
            policy=AdapterCachePolicy(settings.max_adapters_per_replica),
            host=host,
            device=self._model,
            run_on_model=self._model_thread.call,
            in_batch=lambda name: any(row.adapter == name for row in batch.rows),
        )
        # One thread, so that encodes never overlap on the tokenizer.
        self._tokenize = concurrent.futures.ThreadPoolExecutor(1, "loraq-tokenize")
        self._rows_lock = threading.Lock()
        self._rows: dict[str, list[Row]] = {}  # by request id, for cancel
        self._in_flight = 0

    @classmethod
    def from_settings(cls, settings: WorkerSettings | None = None) -> Engine:
        """Load the base model and tokenizer that ``settings`` name (default: the demo kit)."""
        settings = settings or WorkerSettings()
        return cls(settings, load_model(settings))

    @property
    def tokenizer(self) -> object:
        """The tokenizer the engine encodes prompts with."""
        return self._tokenizer

    @property
    def base_model(self) -> torch.nn.Module:
        """The base model with the LoRA layers PEFT injected, for inspection only.

        The model thread owns it: never run it or change it from elsewhere.
        """
        return self._model.base

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        """Run ``request`` to the end; raises :class:`EngineError` for a request at fault."""
        return await output_of(self._events(request, stream=False))

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[TextDelta | GenerationOutput]:
        """Text deltas of ``request`` as they are made, then its output, last.

        Closing the iterator early (``aclose``, or cancelling the task that reads it)
        cancels the row.
        """
        # aclosing: closing this iterator closes the inner one now, not at collection.
        async with contextlib.aclosing(self._events(request, stream=True)) as events:
            async for event in events:
                yield event

    async def ensure_adapter(self, adapter: ResolvedAdapter) -> None:
        """Make ``adapter`` warm on the device (validating it first if it is cold)."""
        await self._adapters.acquire(adapter)
        self._adapters.release(adapter.key)

    async def prefetch(self, adapter: ResolvedAdapter) -> None:
        """Read ``adapter`` into host memory on the loader thread (after the reads of
        requests) and copy it into a device slot if one is *free*: a prefetch never
        evicts. A bad adapter is skipped (logged at DEBUG); this never raises."""
        try:
            await self._adapters.prefetch(adapter)
        except Exception as exc:  # a hint, not a request: nobody waits for its error
            log.debug("prefetch of adapter %r skipped: %s", adapter.key, exc)

    def drop_adapter(self, key: str) -> bool:
        """Free adapter version ``key`` on the host and device tiers once the rows that
        use it are done; whether it was held."""
        return self._adapters.remove(key)

    def cancel(self, request_id: str) -> bool:
        """Stop the rows of ``request_id`` at the next step; their output ends ``cancelled``."""
        with self._rows_lock:
            rows = self._rows.get(request_id, [])
            for row in rows:
                row.cancelled = True
        return bool(rows)

    def loaded_adapters(self) -> list[str]:
        """Keys of the adapters on the device now, least recently used first."""
        return self._adapters.loaded()

    async def adapter_device_bytes(self) -> int:
        """Device bytes the adapters hold (stacked slots, free ones included, and PEFT's
        LoRA weights), read on the model thread between steps."""
        return await asyncio.wrap_future(
            self._model_thread.call(self._model.adapter_bytes, "bytes")
        )

    def host_adapters(self) -> list[str]:
        """Keys of the adapters in host memory, least recently used first."""
        return self._adapters.host.names()

    def model_timeline(self) -> list[TimelineEntry]:
        """What the model thread did lately (decode steps and commands), oldest first."""
        return self._model_thread.timeline()

    def recent_passes(self) -> list[frozenset[str]]:
        """The distinct adapters of each of the latest forward passes, oldest first."""
        return self._stats.recent_passes()

    def observe(self, observer: EngineObserver) -> None:
        """Report every forward pass and adapter load to ``observer`` from now on."""
        self._stats.observer = observer
        self._adapters.on_load = observer.adapter_loaded
        self._adapters.host.on_load = observer.adapter_read

    def backend_stats(self) -> BackendStats:
        """Counters of the decode loop and of the adapter tiers (``cache_*``: the device)."""
        with self._rows_lock:
            in_flight = self._in_flight
        return backend_stats(
            self._stats,
            self._adapters,
            rows_in_flight=in_flight,
        )

    def check_health(self) -> None:
        """Raise ``model_unavailable`` once the model thread has stopped: no row can run."""
        if not self._model_thread.alive:
            raise EngineError(ErrorType.MODEL_UNAVAILABLE, "the model thread stopped")

    async def close(self) -> None:
        """Finish the rows in flight, then stop the model thread."""
        await asyncio.to_thread(self._model_thread.close)
        await asyncio.to_thread(self._adapters.host.close)
        self._tokenize.shutdown(wait=False)
        if self._grammars is not None:
            self._grammars.close()

    async def _events(
        self, request: GenerationRequest, *, stream: bool
    ) -> AsyncGenerator[Update, None]:
        loop = asyncio.get_running_loop()
        prompt_ids = await loop.run_in_executor(
            self._tokenize,
            functools.partial(
                encode_request,
                self._tokenizer,
                request,
                max_input_tokens=self._settings.max_input_tokens,
                max_new_tokens=self._settings.max_new_tokens,
            ),
        )
        # Compiled (or refused with `validation`) before the row exists: a bad format
        # never reaches the batch.
        grammar = await self._matcher(request)
        adapter = resolved_adapter(request)
        sink = _RequestSink(self, loop, stream=stream, adapter=adapter)
        row = Row(
            prompt_ids=prompt_ids,
            adapter=adapter.key if adapter else BASE_ADAPTER,
            max_new_tokens=request.params.max_new_tokens,
            sampler=RowSampler.create(request.params, self._device, prompt_ids),
            sink=sink,
            text=TextTracker(request.params.stop),
            request_id=request.request_id,
            grammar=grammar,
        )
        sink.row = row
        # Tracked before the adapter is ready, so that a cancel during its load counts:
        # the model thread ends a cancelled row as soon as it sees it.
        self._track(row)
        if adapter is not None:
            try:
                # Pinned from here until the row leaves the batch (released on the model
                # thread).
                await self._adapters.acquire(adapter)
            except BaseException:
                self._untrack(row)
                raise
        self._model_thread.submit(row)
        finished = False
        try:
            while not finished:
                event = await sink.events.get()
                if isinstance(event, EngineError):
                    raise event
                finished = isinstance(event, GenerationOutput)
                yield event
        finally:
            # A caller that stops listening (or is cancelled) stops the row's compute.
            row.cancelled = not finished or row.cancelled

    async def _matcher(self, request: GenerationRequest) -> xgrammar.GrammarMatcher | None:
        """A matcher of ``request``'s response_format (``None``: free text)."""
        fmt = request.params.response_format
        if constraint(fmt) is None:
            return None
        if self._grammars is None:
            # The tokenizer thread: reading a large vocabulary takes a moment.
            grammars = await asyncio.get_running_loop().run_in_executor(
                self._tokenize,
                functools.partial(
                    GrammarCompiler,
                    self._tokenizer,
                    vocab_size=self._vocab_size,
                    stop_ids=self._eos_ids,
                    max_bytes=self._settings.max_schema_bytes,
                    timeout_s=self._settings.grammar_compile_timeout_s,
                    cache_size=self._settings.grammar_cache_size,
                ),
            )
            self._grammars = self._grammars or grammars
        return await self._grammars.matcher(fmt)

    @property
    def grammars(self) -> GrammarCompiler | None:
        """The grammar compiler, once a constrained job has come (for benches and tests)."""
        return self._grammars

    def _track(self, row: Row) -> None:
        with self._rows_lock:
            self._in_flight += 1
            if row.request_id is not None:
                self._rows.setdefault(row.request_id, []).append(row)

    def _row_done(self, row: Row) -> None:
        """Model thread: the row has left; unpin its adapter and forget it."""
        if row.adapter != BASE_ADAPTER:
            self._adapters.release(row.adapter)
        self._stats.rows += 1
        self._stats.tokens_generated += len(row.tokens)
        self._untrack(row)

    def _untrack(self, row: Row) -> None:
        with self._rows_lock:
            self._in_flight -= 1
            rows = self._rows.get(row.request_id or "", [])
            if row in rows:
                rows.remove(row)
            if not rows:
                self._rows.pop(row.request_id or "", None)


class _RequestSink:
    """Carries one row's events from the model thread to its caller's event loop."""

    def __init__(
        self,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        *,
        stream: bool,
        adapter: ResolvedAdapter | None,
    ) -> None:
        self._engine = engine
        self._loop = loop
        self._stream = stream
        self._adapter = adapter
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.row: Row | None = None  # set once the row exists
        # A streamed row's log-probability entries handed out so far (with its deltas).
        self._entries: list[TokenLogprob] = []

    def delta(self, text: str) -> None:
        if self._stream and text:
            self._post(TextDelta(text, self._new_entries()))

    def _new_entries(self) -> list[TokenLogprob] | None:
        """The entries of the tokens since the last call, when the row asks for them."""
        row = self.row
        if row is None or row.sampler.top_logprobs is None:
            return None
        start = len(self._entries)
        new = token_logprobs(self._engine.tokenizer, row.tokens[start:], row.logprobs[start:])
        self._entries += new
        return new

    def finish(self, row: Row, reason: FinishReason) -> None:
        self.delta(row.flush_text())
        self._engine._row_done(row)
        self._post(
            GenerationOutput(
                text=row.text.text,
                finish_reason=reason,
                prompt_tokens=len(row.prompt_ids),
                completion_tokens=len(row.tokens),
                adapter=self._adapter.name if self._adapter else None,
                adapter_version=self._adapter.version if self._adapter else None,
                generation_ms=(time.perf_counter() - row.started) * 1000,
                token_ids=list(row.tokens),
                # Every entry: those the deltas carried, then the rest.
                logprobs=None if self._new_entries() is None else self._entries,
            )
        )

    def fail(self, row: Row, error: Exception) -> None:
        self._engine._row_done(row)
        if not isinstance(error, EngineError):
            error = EngineError(ErrorType.INTERNAL, str(error))
        self._post(error)

    def _post(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the caller's loop is gone; nobody is listening
            log.debug("dropped an event for a closed event loop")


if TYPE_CHECKING:
    # mypy proves here that the HF engine is a Backend, the seam its callers use.
    _ENGINE_IS_A_BACKEND: type[Backend] = Engine
