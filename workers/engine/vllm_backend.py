"""The vLLM backend: vLLM's v1 ``AsyncLLM`` doing the forward passes behind the seam.

vLLM brings its kernels (paged attention, CUDA graphs, its LoRA kernels) and its own
scheduler; loraq keeps everything around them: the validation of an adapter against the
base, prompts and chat templates (:mod:`workers.engine.prompts`, so both backends see
the same token ids and limits), and the error types. Adapters arrive resolved (one
version in a local folder, keyed ``name@version``, by the catalogue above the backends);
vLLM gets a ``LoRARequest`` per job named by that key, with one int id per key.

Threads and processes: every method runs on the one event loop the backend was built on.
``AsyncLLM`` runs its engine core in a child process (:mod:`workers.engine.vllm_process`
makes it die with this one); the tokenizer runs on one thread of its own.

vllm is imported here only: the rest of the package works without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas import ErrorType
from schemas.records import TokenLogprob
from workers.adapters.resolved import ResolvedAdapter
from workers.adapters.validation import ModuleShape, base_module_shapes, validate_adapter
from workers.engine.backend import (
    Backend,
    BackendStats,
    EngineObserver,
    output_of,
    resolved_adapter,
)
from workers.engine.logprobs import Step, token_logprobs
from workers.engine.prompts import encode_request
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest, TextDelta
from workers.engine.vllm_config import (
    VllmCounters,
    engine_kwargs,
    finish_reason,
    logprob_steps,
    sampling_kwargs,
    structured_outputs_kwargs,
)
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


def _meta_shapes(settings: WorkerSettings) -> tuple[dict[str, ModuleShape], int | None, Any]:
    """The base's linear modules (from its config, on the meta device: no weights read),
    its longest sequence, and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    remote = settings.trust_remote_code
    config = AutoConfig.from_pretrained(settings.model, trust_remote_code=remote)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote)  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(settings.model, trust_remote_code=remote)
    positions = getattr(config, "max_position_embeddings", None)
    return base_module_shapes(model), positions if isinstance(positions, int) else None, tokenizer


def _release_importer_frames() -> None:
    """Drop the traceback vLLM keeps with its failed optional import of torchcodec.

    vLLM stores that ``ImportError`` in a module global; its traceback's frames reach,
    through ``f_back``, every frame on the stack of whoever first imported vLLM, and keep
    their locals alive: :meth:`VllmBackend.from_settings`'s ``AsyncLLM`` among them. That
    ``AsyncLLM`` then outlived :meth:`VllmBackend.close` until interpreter teardown,
    where its ``__del__`` failed and the pytest process of one CI run never exited.
    The error's message, all vLLM reports from it, stays.
    """
    from vllm.multimodal.media import audio

    error = getattr(audio, "_torchcodec_import_exc", None)
    if isinstance(error, BaseException):
        error.__traceback__ = None


def _engine_lost() -> EngineError:
    return EngineError(ErrorType.MODEL_UNAVAILABLE, "vLLM's engine core stopped")


def _on_cpu(settings: WorkerSettings) -> bool:
    import torch

    return settings.device == "cpu" or not torch.cuda.is_available()


class VllmBackend:
    """Generates text for requests of any adapter with vLLM's ``AsyncLLM``."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        llm: Any,
        tokenizer: Any,
        shapes: dict[str, ModuleShape],
    ) -> None:
        self._settings = settings
        self._llm = llm
        self._tokenizer = tokenizer
        self._shapes = shapes
        self._ids: dict[str, int] = {}  # adapter key -> its LoRARequest id
        self._next_id = itertools.count(1)
        self._folders: dict[str, Path] = {}  # validated folder, and added to vLLM, per key
        self._loads: dict[str, asyncio.Task[None]] = {}  # one load per key at a time
        self._warm: OrderedDict[str, None] = OrderedDict()  # what vLLM holds, LRU first
        self._in_use: Counter[str] = Counter()  # rows running per adapter
        # Dropped keys still in use -> their id and folder, dropped from vLLM when unused.
        self._retired: dict[str, tuple[int, Path]] = {}
        self._rows: dict[str, set[str]] = {}  # request id -> vLLM's request ids
        self._row_ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()  # fire-and-forget calls, kept alive
        self._counters = VllmCounters()
        self._observer: EngineObserver | None = None
        self._tokenize = concurrent.futures.ThreadPoolExecutor(1, "loraq-tokenize")
        # vLLM's context: longer prompts fail validation, generation stops at its end.
        self.max_model_len = settings.max_input_tokens + settings.max_new_tokens

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> VllmBackend:
        """Start vLLM on the model ``settings`` name; call it on the loop it will serve."""
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from workers.engine.vllm_process import bind_engine_core_to_parent

        _release_importer_frames()
        shapes, positions, tokenizer = _meta_shapes(settings)
        kwargs = engine_kwargs(settings, shapes, max_positions=positions, on_cpu=_on_cpu(settings))
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(
            **kwargs["structured_outputs_config"]
        )
        bind_engine_core_to_parent()
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        backend = cls(settings, llm=llm, tokenizer=tokenizer, shapes=shapes)
        backend.max_model_len = int(kwargs["max_model_len"])
        return backend

    @property
    def tokenizer(self) -> Any:
        """The tokenizer prompts are encoded with."""
        return self._tokenizer

    async def generate(self, request: GenerationRequest) -> GenerationOutput:
        """Run ``request`` to the end; raises :class:`EngineError` for a request at fault."""
        return await output_of(self._events(request, stream=False))

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[TextDelta | GenerationOutput]:
        """Text deltas of ``request`` as vLLM makes them, then its output, last; closing
        the iterator early aborts the row in vLLM."""
        async with contextlib.aclosing(self._events(request, stream=True)) as events:
            async for event in events:
                yield event

    def cancel(self, request_id: str) -> bool:
        """Abort the rows of ``request_id`` in vLLM; their output ends ``cancelled``."""
        rows = self._rows.get(request_id, set())
        if rows:
            self._spawn(self._llm.abort(list(rows)))
        return bool(rows)

    async def ensure_adapter(self, adapter: ResolvedAdapter) -> None:
        """Validate ``adapter``'s folder (first use) and have vLLM load it."""
        await self._ensure(adapter)
        self._spawn(self._refresh_warm())

    async def prefetch(self, adapter: ResolvedAdapter) -> None:
        """Load ``adapter`` into vLLM ahead of its requests; a bad one is skipped."""
        try:
            await self.ensure_adapter(adapter)
        except Exception as exc:  # a hint, not a request: nobody waits for its error
            log.debug("prefetch of adapter %r skipped: %s", adapter.key, exc)

    def drop_adapter(self, key: str) -> bool:
        """Forget version ``key``; vLLM drops it once no row uses it."""
        lora_id = self._ids.pop(key, None)
        folder = self._folders.pop(key, None)
        self._warm.pop(key, None)
        if lora_id is None or folder is None:
            return False
        if self._in_use[key]:
            self._retired[key] = (lora_id, folder)
        else:
            self._drop(lora_id)
        log.info("adapter %s dropped; freed once unused", key)
        return True

    def loaded_adapters(self) -> list[str]:
        """Adapters vLLM holds (as of the latest load), least recently used first."""
        return list(self._warm)

    def host_adapters(self) -> list[str]:
        """vLLM keeps its adapters in its own host cache: the same list."""
        return self.loaded_adapters()

    def observe(self, observer: EngineObserver) -> None:
        """Report adapter loads to ``observer`` (vLLM does not show us its passes)."""
        self._observer = observer

    def backend_stats(self) -> BackendStats:
        """What this backend counts; vLLM's scheduler and caches tell it nothing more, so
        the pass and tier counters stay 0."""
        c = self._counters
        return BackendStats(
            rows=c.rows,
            tokens_generated=c.tokens_generated,
            rows_in_flight=c.rows_in_flight,
            cache_loads=c.adapter_loads,
            cache_load_failures=c.adapter_load_failures,
            adapter_load_ms_total=c.adapter_load_ms_total,
            adapters_loaded=len(self._warm),
            adapters_removed=c.adapters_removed,
        )

    def check_health(self) -> None:
        """Raise ``model_unavailable`` once vLLM's engine core is gone (it died, or
        :meth:`close` stopped it): vLLM never restarts it, so no row can run here again."""
        if self._llm is None or self._llm.errored:
            raise _engine_lost()

    async def close(self) -> None:
        """Stop vLLM (rows still running are aborted) and its engine-core process."""
        self._llm.shutdown()
        # Dropped now, while the interpreter is whole: vLLM's __del__ shuts down again,
        # which fails during interpreter teardown.
        self._llm = None
        self._tokenize.shutdown(wait=False)

    async def _events(
        self, request: GenerationRequest, *, stream: bool
    ) -> AsyncGenerator[TextDelta | GenerationOutput, None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt_ids = await asyncio.get_running_loop().run_in_executor(
            self._tokenize,
            functools.partial(
                encode_request,
                self._tokenizer,
                request,
                max_input_tokens=self._settings.max_input_tokens,
                max_new_tokens=self._settings.max_new_tokens,
            ),
        )
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise EngineError(
                ErrorType.VALIDATION,
                f"the prompt is {len(prompt_ids)} tokens, over this model's context of "
                f"{self.max_model_len} with room for new tokens",
            )
        adapter = resolved_adapter(request)
        lora = await self._lora_request(adapter) if adapter else None
        sampling = sampling_kwargs(request.params)
        structured = structured_outputs_kwargs(
            request.params.response_format, self._settings.max_schema_bytes
        )
        if structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            sampling["structured_outputs"] = StructuredOutputsParams(**structured)
        sampling["max_tokens"] = min(sampling["max_tokens"], room)
        # A caller that waits for the whole output gets it once, as vLLM's own server
        # answers a completion: no output object and no pass of this loop per token.
        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        params = SamplingParams(**sampling, output_kind=kind)
        row_id = self._track(request)
        started = time.perf_counter()
        text: list[str] = []
        tokens: list[int] = []
        steps: list[Step] = []
        wants_logprobs = sampling["logprobs"] is not None
        # A streamed row's log-probability entries handed out so far (with its deltas).
        entries: list[TokenLogprob] = []
        reason: str | None = None
        try:
            prompt = TokensPrompt(prompt_token_ids=prompt_ids)
            outputs = self._llm.generate(prompt, params, row_id, lora_request=lora)
            async for out in _format_refused(outputs) if structured else outputs:
                piece = out.outputs[0]
                text.append(piece.text)
                tokens.extend(piece.token_ids)
                if wants_logprobs:
                    steps += logprob_steps(piece.token_ids, piece.logprobs, sampling["logprobs"])
                if stream and piece.text:
                    # The tokens since the last delta (vLLM may hold a token's text back).
                    new = self._entries(tokens, steps, entries) if wants_logprobs else None
                    yield TextDelta(piece.text, new)
                if out.finished:
                    reason = piece.finish_reason
            if wants_logprobs:
                self._entries(tokens, steps, entries)  # those no delta carried
            yield GenerationOutput(
                text="".join(text),
                finish_reason=finish_reason(reason),
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(tokens),
                adapter=adapter.name if adapter else None,
                adapter_version=adapter.version if adapter else None,
                generation_ms=(time.perf_counter() - started) * 1000,
                token_ids=tokens,
                logprobs=entries if wants_logprobs else None,
            )
        except EngineDeadError:
            # Not the job's fault: it runs again elsewhere (vLLM logged the cause).
            raise _engine_lost() from None
        finally:
            # The caller left (or vLLM refused the row): free the row in vLLM, which a
            # dead engine core cannot do.
            if reason is None and not self._llm.errored:
                self._spawn(self._llm.abort(row_id))
            self._untrack(request, row_id, len(tokens))

    def _entries(
        self, tokens: list[int], steps: list[Step], done: list[TokenLogprob]
    ) -> list[TokenLogprob]:
        """The entries of ``tokens`` past those in ``done``; adds them to ``done``."""
        new = token_logprobs(self._tokenizer, tokens[len(done) :], steps[len(done) :])
        done += new
        return new

    async def _lora_request(self, adapter: ResolvedAdapter) -> Any:
        """The ``LoRARequest`` of ``adapter``, validated and loaded on first use."""
        from vllm.lora.request import LoRARequest

        folder = await self._ensure(adapter)
        if adapter.key in self._warm:
            self._warm.move_to_end(adapter.key)
        return LoRARequest(adapter.key, self._ids[adapter.key], str(folder))

    async def _ensure(self, adapter: ResolvedAdapter) -> Path:
        """Validate ``adapter`` and add it to vLLM once per key; concurrent first uses
        share one load."""
        name, folder = adapter.key, adapter.folder
        if self._folders.get(name) == folder:
            return folder
        load = self._loads.get(name)
        if load is None:
            load = asyncio.ensure_future(self._load(name, folder))
            self._loads[name] = load
            load.add_done_callback(lambda _: self._loads.pop(name, None))
        await asyncio.shield(load)
        return folder

    async def _load(self, name: str, folder: Path) -> None:
        from vllm.lora.request import LoRARequest

        started = time.perf_counter()
        try:
            # Ours first: the same incompatible_adapter errors as the HF engine, before
            # vLLM reads any tensor.
            await asyncio.to_thread(
                validate_adapter, folder, self._shapes, self._settings.max_lora_rank
            )
            lora_id = self._ids.get(name) or next(self._next_id)
            await self._llm.add_lora(LoRARequest(name, lora_id, str(folder)))
        except EngineError:
            self._counters.adapter_load_failures += 1
            raise
        except Exception as exc:  # vLLM refuses what its LoRA layers cannot hold
            self._counters.adapter_load_failures += 1
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER, f"adapter {name!r} failed to load in vLLM: {exc}"
            ) from exc
        seconds = time.perf_counter() - started
        self._ids[name], self._folders[name] = lora_id, folder
        self._counters.adapter_loads += 1
        self._counters.adapter_load_ms_total += seconds * 1000
        if self._observer is not None:
            self._observer.adapter_loaded(seconds)
        await self._refresh_warm()

    async def _refresh_warm(self) -> None:
        """Mirror the adapters vLLM holds now (its LRU may have dropped some)."""
        held = await self._llm.list_loras()
        names = {lora_id: name for name, lora_id in self._ids.items()}
        for name in [n for n in self._warm if self._ids.get(n) not in held]:
            del self._warm[name]
        for lora_id in sorted(held):
            found = names.get(lora_id)
            if found is not None and found not in self._warm:
                self._warm[found] = None

    def _track(self, request: GenerationRequest) -> str:
        row_id = f"{request.request_id or 'row'}#{next(self._row_ids)}"
        self._rows.setdefault(request.request_id or "", set()).add(row_id)
        self._counters.rows_in_flight += 1
        if request.resolved:
            self._in_use[request.resolved.key] += 1
        return row_id

    def _untrack(self, request: GenerationRequest, row_id: str, tokens: int) -> None:
        rows = self._rows.get(request.request_id or "", set())
        rows.discard(row_id)
        if not rows:
            self._rows.pop(request.request_id or "", None)
        self._counters.rows_in_flight -= 1
        self._counters.rows += 1
        self._counters.tokens_generated += tokens
        name = request.resolved.key if request.resolved else None
        if name:
            self._in_use[name] -= 1
            if not self._in_use[name]:
                del self._in_use[name]
                if name in self._retired:
                    self._drop(self._retired.pop(name)[0])

    def _drop(self, lora_id: int) -> None:
        self._counters.adapters_removed += 1
        self._spawn(self._llm.remove_lora(lora_id))

    def _spawn(self, call: Any) -> None:
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _format_refused(outputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``outputs``, with vLLM's refusal of a response_format (a ``ValueError`` before the
    first output: it compiles the grammar when it takes the request) as ``validation``."""
    from vllm.exceptions import VLLMValidationError

    first = True
    try:
        async for out in outputs:
            first = False
            yield out
    except (ValueError, VLLMValidationError) as exc:
        if not first:
            raise
        raise EngineError(ErrorType.VALIDATION, f"response_format cannot be served: {exc}") from exc


if TYPE_CHECKING:
    # mypy proves here that the vLLM backend is a Backend, the seam its callers use.
    _VLLM_IS_A_BACKEND: type[Backend] = VllmBackend
