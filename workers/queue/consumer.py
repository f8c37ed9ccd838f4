"""The consumer loop of one replica: read only what it can run, keep leases, stop cleanly.

Back-pressure: the loop reads at most as many entries as it has free in-flight slots, so
jobs wait in Redis (where any consumer can take them), not in this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import redis.asyncio as aioredis

from workers.logs import job_extra
from workers.queue import policy
from workers.queue.runner import InFlight, JobRunner
from workers.queue.store import REDIS_DOWN, Entry, JobStore, until_reachable
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConsumerDied(RuntimeError):
    """The consumer loop ended with an error; the replica must be replaced."""


class QueueConsumer:
    """Reads ``{P}:jobs`` as one named member of the consumer group and runs its jobs."""

    def __init__(
        self, store: JobStore, runner: JobRunner, settings: WorkerSettings, name: str
    ) -> None:
        self.store = store
        self.runner = runner
        self.settings = settings
        self.name = name
        self.in_flight: dict[str, InFlight] = {}
        self.counters = {"started": 0, "finished": 0, "errors": 0, "reclaimed": 0}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._reclaim_cursor = "0-0"
        self._next_reclaim = 0.0
        self._next_trim = 0.0

    def start(self) -> None:
        """Start the loop and the lease keeper as background tasks."""
        self._loop_task = asyncio.ensure_future(self._run())
        self._lease_task = asyncio.ensure_future(self._keep_leases())

    def raise_if_dead(self) -> None:
        """Raise :class:`ConsumerDied` when the loop has ended without being stopped."""
        for task in (self._loop_task, self._lease_task):
            if task is not None and task.done() and not self._stopping.is_set():
                error = None if task.cancelled() else task.exception()
                raise ConsumerDied(f"consumer {self.name} loop ended: {error!r}")

    async def stop(self, timeout_s: float) -> None:
        """Stop reading; give in-flight jobs ``timeout_s`` to finish.

        Jobs that do not finish in time are left unacknowledged: they stay pending and
        are run again (by this consumer's successor, or reclaimed by another).
        """
        self._stopping.set()
        self._slot_freed.set()
        if self._loop_task is not None:
            # The loop ends after its current blocking read, unless Redis is down.
            await asyncio.wait([self._loop_task], timeout=self.settings.read_block_ms / 1000 + 1)
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            done, left = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in left:
                task.cancel()
            log.info("consumer %s stopped: %d finished, %d left", self.name, len(done), len(left))
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)

    def stats(self) -> dict[str, float]:
        """Counters of this consumer, and its jobs in flight now."""
        return {**self.counters, "in_flight": len(self.in_flight)}

    @property
    def free_slots(self) -> int:
        """In-flight slots this consumer can fill now."""
        return self.settings.max_in_flight - len(self.in_flight)

    async def _run(self) -> None:
        await self._redis(self.store.ensure_group)
        for warning in policy.persistence_warnings(await self._redis(self.store.server_config)):
            log.warning("%s", warning)
        await self._resume_own_pending()
        while not self._stopping.is_set():
            await self._wait_for_slot()
            if self._stopping.is_set():
                break
            entries = await self._redis(self._next_entries)
            for entry in entries:
                self._spawn(entry)

    async def _resume_own_pending(self) -> None:
        """Run the entries this consumer name took before a restart, before new ones."""
        after = "0"
        while not self._stopping.is_set():
            await self._wait_for_slot()
            count = policy.read_count(self.free_slots, self.settings.max_in_flight)
            entries = await self._redis(
                partial(self.store.read_pending, self.name, count=count, after=after)
            )
            if not entries:
                return
            log.info("consumer %s resumes %d pending entries", self.name, len(entries))
            for entry in entries:
                self._spawn(entry)
            after = entries[-1].entry_id

    async def _next_entries(self) -> list[Entry]:
        """Stale entries of dead consumers first (now and then), else new ones."""
        count = policy.read_count(self.free_slots, self.settings.max_in_flight)
        now = time.monotonic()
        if now >= self._next_trim:
            trimmed = await self.store.trim()
            log.debug("consumer %s trimmed %d acknowledged entries", self.name, trimmed)
            self._next_trim = now + self.settings.trim_interval_s
        if now >= self._next_reclaim:
            self._reclaim_cursor, entries, deleted = await self.store.reclaim(
                self.name,
                min_idle_ms=int(self.settings.visibility_timeout_s * 1000),
                count=count,
                cursor=self._reclaim_cursor,
            )
            if deleted:
                log.warning("entries deleted before they were processed: %s", deleted)
            if self._reclaim_cursor == "0-0":
                self._next_reclaim = now + self.settings.visibility_timeout_s / 2
            if entries:
                self.counters["reclaimed"] += len(entries)
                log.info("consumer %s reclaimed %d stale entries", self.name, len(entries))
                return entries
        return await self.store.read(self.name, count=count, block_ms=self.settings.read_block_ms)

    async def _wait_for_slot(self) -> None:
        while self.free_slots <= 0 and not self._stopping.is_set():
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def _spawn(self, entry: Entry) -> None:
        if entry.entry_id in self.in_flight:
            return  # a reclaim handed back an entry this consumer already runs
        slot = InFlight(entry.entry_id)
        self.in_flight[entry.entry_id] = slot
        self.counters["started"] += 1
        task = asyncio.ensure_future(self._run_entry(entry, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_entry(self, entry: Entry, slot: InFlight) -> None:
        try:
            await self.runner.run(entry, slot)
            self.counters["finished"] += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacknowledged: its lease lapses and the entry is reclaimed and retried.
            self.counters["errors"] += 1
            log.exception(
                "job entry %s could not be completed; left pending",
                entry.entry_id,
                extra=job_extra(slot.job_id, slot.adapter),
            )
        finally:
            self.in_flight.pop(entry.entry_id, None)
            self._slot_freed.set()

    async def _keep_leases(self) -> None:
        """Renew the leases of in-flight entries; pass on cancellation requests sooner.

        Cancellation is looked for every ``cancel_poll_s`` (one pipelined EXISTS per
        running job), leases renewed every ``lease_renew_s``.
        """
        next_renewal = 0.0
        # Ends on the flag too: a cancel that lands in a Redis command can be lost.
        while not self._stopping.is_set():
            await asyncio.sleep(min(self.settings.cancel_poll_s, self.settings.lease_renew_s))
            try:
                if time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + self.settings.lease_renew_s
                    await self._renew_once()
                await self._pass_on_cancels()
            except REDIS_DOWN as exc:
                log.warning("lease renewal failed (redis unreachable): %s", exc)

    async def _renew_once(self) -> None:
        lost = await self.store.renew(self.name, list(self.in_flight))
        if lost:
            log.warning("consumer %s lost the lease of %s", self.name, lost)

    async def _pass_on_cancels(self) -> None:
        running = [slot for slot in self.in_flight.values() if slot.job_id is not None]
        cancelled = await self.store.cancel_requested([str(slot.job_id) for slot in running])
        for slot in running:
            if slot.job_id in cancelled and not slot.cancel_requested:
                log.debug(
                    "job %s: cancellation requested",
                    slot.job_id,
                    extra=job_extra(slot.job_id, slot.adapter),
                )
                slot.request_cancel()

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` through Redis outages; re-create the group if it was deleted."""
        while True:
            try:
                return await until_reachable(call, f"consumer {self.name}")
            except aioredis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group of %s is gone; creating it again", self.store.keys.jobs)
                await until_reachable(self.store.ensure_group, f"consumer {self.name}")
