"""Structured output on the HF engine: a job's ``response_format`` as a token grammar.

xgrammar (chosen by measurement, docs/SERVING.md "Structured output") compiles each
format once against the model's tokenizer; compiled grammars live in a bounded LRU keyed
by the format's digest. Compiles run on their own threads, never the model thread, and a
caller waits at most ``LORAQ_GRAMMAR_COMPILE_TIMEOUT_S`` for one: a hostile format fails
its own job with ``validation`` while the batch keeps stepping (the compile cannot be
interrupted, so it runs on; its result is kept for the next job with the same format).

Each constrained row carries its own matcher. Per step, :class:`GrammarMasks` fills the
masks of every constrained row of the pass (xgrammar's batch fill, threads in C++) and
applies them to the pass's logits in one tensor operation; free rows are not touched.
A row may end (EOS) only where its grammar accepts: the end tokens are the grammar's stop
tokens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from schemas import ErrorType
from schemas.response_format import (
    ChoiceFormat,
    Constraint,
    JsonObjectFormat,
    JsonSchemaFormat,
    RegexFormat,
    constraint,
    format_digest,
    format_json,
)
from workers.errors import EngineError

if TYPE_CHECKING:
    import torch
    import xgrammar

COMPILE_THREADS = 2
# JSON as json.dumps(separators=(",", ":")) writes it, as vLLM's disable_any_whitespace:
# no free whitespace, since a model that keeps emitting spaces would never end.
COMPACT: dict[str, Any] = {"any_whitespace": False, "separators": (",", ":")}


def choice_grammar(choices: Sequence[str]) -> str:
    """The EBNF grammar of exactly one of ``choices`` (JSON string escapes are EBNF's)."""
    return "root ::= " + " | ".join(f"({json.dumps(choice)})" for choice in choices)


def check_size(fmt: Constraint, max_bytes: int) -> None:
    """``validation`` for a format over this replica's byte cap (both backends)."""
    size = len(format_json(fmt))
    if size > max_bytes:
        raise EngineError(
            ErrorType.VALIDATION,
            f"response_format is {size} bytes as JSON: this model's cap is {max_bytes} "
            "(LORAQ_MAX_SCHEMA_BYTES)",
        )


class GrammarCompiler:
    """Compiles formats against one tokenizer, off the caller's thread, with a cache."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        vocab_size: int,
        stop_ids: Iterable[int],
        max_bytes: int,
        timeout_s: float,
        cache_size: int,
    ) -> None:
        try:
            import xgrammar
        except ImportError:
            raise EngineError(
                ErrorType.VALIDATION,
                "this model replica cannot serve response_format: install loraq[structured]",
            ) from None

        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids)
        )
        # xgrammar's own cache is unbounded: ours is the bounded one.
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._cache_size = cache_size
        self._pool = concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS, "loraq-grammar")
        self._lock = threading.Lock()  # the pool's threads store results too
        # digest -> the compiled grammar, or the message of why it cannot compile
        self._done: OrderedDict[str, xgrammar.CompiledGrammar | str] = OrderedDict()
        self._running: dict[str, concurrent.futures.Future[xgrammar.CompiledGrammar]] = {}
        self.compile_ms: dict[str, float] = {}  # digest -> how long its compile took

    async def matcher(self, fmt: object) -> xgrammar.GrammarMatcher | None:
        """A fresh matcher for a row with ``response_format`` ``fmt`` (``None``: free text);
        :class:`EngineError` ``validation`` when the format cannot be served."""
        found = constraint(fmt)
        if found is None:
            return None
        import xgrammar

        return xgrammar.GrammarMatcher(await self.compiled(found))

    async def compiled(self, fmt: Constraint) -> xgrammar.CompiledGrammar:
        """``fmt``'s grammar, from the cache or compiled on the pool within the timeout."""
        check_size(fmt, self._max_bytes)
        digest = format_digest(fmt)
        with self._lock:
            done = self._done.get(digest)
            if done is not None:
                self._done.move_to_end(digest)
            future = self._running.get(digest)
            if done is None and future is None:
                future = self._pool.submit(self._compile, digest, fmt)
                self._running[digest] = future
        if isinstance(done, str):
            raise EngineError(ErrorType.VALIDATION, done)
        if done is not None:
            return done
        assert future is not None
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self._timeout_s
            )
        except TimeoutError:
            raise EngineError(
                ErrorType.VALIDATION,
                f"response_format took over {self._timeout_s:g} s to compile "
                "(LORAQ_GRAMMAR_COMPILE_TIMEOUT_S): simplify it",
            ) from None
        except EngineError:
            raise
        except Exception as exc:  # xgrammar's parse and conversion errors
            raise EngineError(ErrorType.VALIDATION, _refusal(exc)) from None

    def close(self) -> None:
        """Stop taking compiles (a running one finishes on its own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _compile(self, digest: str, fmt: Constraint) -> xgrammar.CompiledGrammar:
        """Pool thread: compile, then remember the grammar or why it failed."""
        import time

        started = time.perf_counter()
        result: xgrammar.CompiledGrammar | str
        try:
            result = self._build(fmt)
        except Exception as exc:
            result = _refusal(exc)
            raise
        finally:
            with self._lock:
                self._running.pop(digest, None)
                self._done[digest] = result
                self.compile_ms[digest] = (time.perf_counter() - started) * 1000
                while len(self._done) > self._cache_size:
                    evicted, _ = self._done.popitem(last=False)
                    self.compile_ms.pop(evicted, None)
        return result

    def _build(self, fmt: Constraint) -> xgrammar.CompiledGrammar:
        compiler = self._compiler
        if isinstance(fmt, JsonObjectFormat):
            # An object, as OpenAI's json_object means and vLLM compiles it (xgrammar's
            # builtin JSON grammar takes any value).
            return compiler.compile_json_schema('{"type": "object"}', **COMPACT)
        if isinstance(fmt, JsonSchemaFormat):
            # xgrammar's strict mode (its default, as in vLLM): an object holds only the
            # properties its schema lists.
            return compiler.compile_json_schema(json.dumps(fmt.json_schema.schema_), **COMPACT)
        if isinstance(fmt, RegexFormat):
            return compiler.compile_regex(fmt.pattern)
        assert isinstance(fmt, ChoiceFormat)
        return compiler.compile_grammar(choice_grammar(fmt.choices))


def _refusal(exc: Exception) -> str:
    """The message of a format xgrammar refused: its last line, without the C++ location."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    message = lines[-1] if lines else type(exc).__name__
    if ": " in message and message.startswith("["):  # "[time] file.cc:123: what"
        message = message.split(": ", 1)[1]
    return f"response_format cannot be served: {message[:500]}"


class GrammarMasks:
    """The token masks of a pass's constrained rows; model thread only."""

    def __init__(self, rows: int, vocab_size: int) -> None:
        import xgrammar

        self._xgrammar = xgrammar
        self._vocab = vocab_size
        self._bitmask = xgrammar.allocate_token_bitmask(rows, vocab_size)  # [rows, V/32]
        self._fill = xgrammar.BatchGrammarMatcher()

    def apply(
        self, logits: torch.Tensor, matchers: Sequence[xgrammar.GrammarMatcher | None]
    ) -> None:
        """Mask ``logits`` (``[B, V]``, row ``i`` of ``matchers[i]``) in place: each
        constrained row keeps only the tokens its grammar allows next."""
        indices = [i for i, matcher in enumerate(matchers) if matcher is not None]
        if not indices:
            return
        live = [m for m in matchers if m is not None]
        self._fill.batch_fill_next_token_bitmask(live, self._bitmask, indices)
        bitmask = self._bitmask[: logits.shape[0]]
        if logits.device.type != "cpu":
            bitmask = bitmask.to(logits.device, non_blocking=True)
        self._xgrammar.apply_token_bitmask_inplace(
            logits, bitmask, vocab_size=self._vocab, indices=indices
        )
