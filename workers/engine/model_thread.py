"""The one thread that owns the model: adapter commands and decode steps, in order.

Everything that touches the model runs here, so a load or delete never overlaps a
forward pass, and the asyncio loop of the replica never waits on torch. Commands run
between decode steps, which is what lets an adapter load while other rows keep decoding.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas import ErrorType
from workers.engine.batcher import Batcher
from workers.engine.decode import DecodeBatch, Row
from workers.engine.requests import EngineError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Command:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]
    label: str


@dataclass(frozen=True)
class TimelineEntry:
    """One thing the model thread did: a decode step (``"step"``) or a labelled command."""

    seq: int  # counts from 1 over the engine's life
    label: str
    ms: float


class _Stop:
    """Queue marker: the model thread ends."""


class ModelThread:
    """Runs the decode loop and model commands on a dedicated thread."""

    def __init__(self, batch: DecodeBatch, batcher: Batcher[Row]) -> None:
        self._batch = batch
        self._batcher = batcher
        self._queue: queue.Queue[Row | _Command | _Stop] = queue.Queue()
        self._closed = False
        # What ran, in order, for tests and debugging (a few microseconds per item).
        self._timeline: deque[TimelineEntry] = deque(maxlen=4096)
        self._timeline_lock = threading.Lock()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="loraq-model", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T], label: str = "command") -> concurrent.futures.Future[T]:
        """Run ``fn`` on the model thread between decode steps; its result or error.

        ``label`` names it in :meth:`timeline`.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(EngineError(ErrorType.INTERNAL, "the engine is closed"))
        else:
            self._queue.put(_Command(fn, future, label))
        return future

    @property
    def alive(self) -> bool:
        """Whether the thread still runs (it ends only after :meth:`close`)."""
        return self._thread.is_alive()

    def timeline(self) -> list[TimelineEntry]:
        """The latest decode steps and commands of the model thread, oldest first."""
        with self._timeline_lock:
            return list(self._timeline)

    def _record(self, label: str, started: float) -> None:
        with self._timeline_lock:
            self._seq += 1
            self._timeline.append(
                TimelineEntry(self._seq, label, (time.perf_counter() - started) * 1000)
            )

    def submit(self, row: Row) -> None:
        """Queue ``row`` for the next admission."""
        if self._closed:
            row.sink.fail(row, EngineError(ErrorType.INTERNAL, "the engine is closed"))
            return
        self._queue.put(row)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop after the rows in flight have finished (or ``timeout_s``)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_Stop())
        self._thread.join(timeout_s)

    def _next_row(self, timeout_s: float | None) -> Row | None:
        """The next queued row, running the commands met on the way."""
        while True:
            try:
                item = self._queue.get(block=timeout_s != 0, timeout=timeout_s or None)
            except queue.Empty:
                return None
            if isinstance(item, Row):
                return item
            if isinstance(item, _Stop):
                return None
            self._run_command(item)

    def _run(self) -> None:
        while len(self._batch) or not self._closed:
            rows = self._batcher.collect(self._next_row, running=self._occupied())
            try:
                self._advance(rows)
            except Exception as exc:  # a bug or a device error: fail these rows, keep serving
                log.exception("decode step failed")
                error = EngineError(ErrorType.INTERNAL, f"generation failed: {exc}")
                for row in {*self._batch.fail_all(), *rows}:
                    row.sink.fail(row, error)
        self._drain()

    def _occupied(self) -> int:
        """Rows the batcher must count as taken: all of them if no row can join now."""
        running = len(self._batch)
        if running and not self._batch.joinable:
            return self._batcher.max_batch_size
        return running

    def _advance(self, rows: Sequence[Row]) -> None:
        live = [row for row in rows if not row.cancelled]
        for row in rows:
            if row.cancelled:
                row.sink.finish(row, "cancelled")
        started = time.perf_counter()
        if live:
            self._batch.admit(live)
        if len(self._batch):
            self._batch.step()
            self._record("step", started)

    def _drain(self) -> None:
        """After the stop: whatever is still queued fails, nothing waits forever."""
        error = EngineError(ErrorType.INTERNAL, "the engine is closed")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Row):
                item.sink.fail(item, error)
            elif isinstance(item, _Command) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _run_command(self, command: _Command) -> None:
        if not command.future.set_running_or_notify_cancel():
            return
        started = time.perf_counter()
        try:
            result = command.fn()
        except BaseException as exc:  # handed to the caller through its future
            self._record(command.label, started)
            command.future.set_exception(exc)
            return
        # Recorded before the caller hears of it, so its view of the timeline holds it.
        self._record(command.label, started)
        command.future.set_result(result)
