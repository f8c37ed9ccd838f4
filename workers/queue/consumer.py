"""The consumer loop of one replica: claim, choose what starts where, keep leases, stop cleanly.

Its helpers each do one job: :class:`Housekeeping` trims the stream and reclaims dead
consumers' entries between reads, :class:`CancelWatcher` passes cancel requests on to
running jobs, :class:`ClaimedWindow` holds what was claimed and asks the planner.

One loop: claim into the window, ask the planner (:mod:`workers.scheduling.planner`)
what starts and where, start it, wait for a change. The planner's policy is the only
thing the window's size changes. With the window on (``schedule_window`` > 0) the loop
claims up to that many entries and the planner chooses which start and on which model
replica, from what the replicas hold warm. With it off, the policy is FIFO: the loop
claims only as many entries as it has free in-flight slots and they start in stream
order (Serve's router places them). Either way back-pressure holds: what a consumer
cannot hold waits in Redis, where any consumer can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis

from workers.errors import REDIS_DOWN
from workers.logs import job_extra
from workers.queue import policy
from workers.queue.cancel_watch import CancelWatcher
from workers.queue.claimed import ClaimedWindow, job_cap
from workers.queue.consumer_stats import ConsumerCounters, ConsumerStats, WindowFigures
from workers.queue.housekeeping import Housekeeping
from workers.queue.runner import InFlight, JobRunner
from workers.queue.slot_lease import SlotClaim, SlotLease
from workers.queue.store import Entry, JobStore, until_reachable
from workers.queue.tenant_labels import TenantLabels
from workers.queue.tenants import TenantBook
from workers.scheduling.tenant_limits import TenantLimits
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

# How long stop() waits for the jobs it cancelled to mark themselves queued again.
REQUEUE_S = 1.0

T = TypeVar("T")
# With jobs waiting in the window and slots free (their replicas' slots held by other
# consumers' jobs, or their tenant at its cap), the loop plans again this often: what
# holds them back may have ended.
WINDOW_REPLAN_S = 0.02
# The longest the loop waits without planning again.
REPLICAS_READ_S = 1.0
# How often the window rereads the replicas' heartbeats, at most: a replica beats within
# DEVICE_WATCH_S (workers/serve/model_deployment.py) when its device adapters change.
BEATS_READ_S = 0.25
# A prefetch hint is sent again to the same replica only after this long.
PREFETCH_REPEAT_S = 10.0


class Prefetcher(Protocol):
    """Asks a model replica to warm adapters before their jobs arrive."""

    async def prefetch(self, replica: str, adapters: list[str]) -> None:
        """Warm ``adapters`` on ``replica`` (a hint: may do nothing)."""


class ConsumerDied(RuntimeError):
    """The consumer loop ended with an error; the replica must be replaced."""


class QueueConsumer:
    """Reads ``{P}:jobs`` as one named member of the consumer group and runs its jobs."""

    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        settings: WorkerSettings,
        name: str,
        *,
        prefetcher: Prefetcher | None = None,
        tenant_labels: TenantLabels | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.settings = settings
        self.name = name
        self.prefetcher = prefetcher
        self.in_flight: dict[str, InFlight] = {}
        fifo = settings.schedule_window == 0
        self.window = ClaimedWindow(
            capacity=max(
                settings.schedule_window, settings.max_claimed_jobs, settings.max_in_flight
            ),
            horizon=max(settings.schedule_window, settings.max_in_flight),
            max_passover_s=settings.max_passover_s,
            slots=settings.max_adapters_per_replica,
            tenants=TenantBook(
                settings.tenant_weight_map,
                TenantLimits.share(
                    settings.tenant_max_in_flight,
                    settings.tenant_rate_per_s,
                    settings.tenant_burst,
                    settings.num_consumer_replicas,
                ),
                tenant_labels
                if tenant_labels is not None
                else TenantLabels(settings.tenant_weight_map, settings.tenant_labels_max),
            ),
            fifo=fifo,
            headroom=min(settings.tenant_headroom, settings.max_in_flight - 1),
        )
        # FIFO places nothing (Serve's router does): no replica's slots to lease.
        self.lease: SlotLease | None = None
        if not fifo:
            self.lease = SlotLease(store.client, store.keys, name, settings.visibility_timeout_s)
        # Entries whose job holds a slot in the lease: released when it ends.
        self._leased: set[str] = set()
        self._consumers = 1  # consumers holding slots, as the latest ledger showed
        self._next_replicas_read = 0.0
        self._prefetched: dict[tuple[str, str], float] = {}
        self.counters = ConsumerCounters()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._cancel_task: asyncio.Task[None] | None = None
        self.housekeeping = Housekeeping(
            store,
            name,
            trim_interval_s=settings.trim_interval_s,
            visibility_timeout_s=settings.visibility_timeout_s,
        )
        self.cancels = CancelWatcher(store, self.in_flight.values, settings.cancel_poll_s)

    def start(self) -> None:
        """Start the loop, the lease keeper and the cancel watcher as background tasks."""
        self._loop_task = asyncio.ensure_future(self._run())
        self._lease_task = asyncio.ensure_future(self._keep_leases())
        self._cancel_task = asyncio.ensure_future(self.cancels.run(self._stopping))

    def raise_if_dead(self) -> None:
        """Raise :class:`ConsumerDied` when a loop has ended without being stopped."""
        for task in (self._loop_task, self._lease_task, self._cancel_task):
            if task is not None and task.done() and not self._stopping.is_set():
                error = None if task.cancelled() else task.exception()
                raise ConsumerDied(f"consumer {self.name} loop ended: {error!r}")

    async def stop(self, timeout_s: float) -> None:
        """Stop reading; give in-flight jobs what is left of ``timeout_s`` to finish.

        Jobs that do not finish in time are left unacknowledged: they stay pending and
        are run again (by this consumer's successor, or reclaimed by another), their
        records back to ``queued``. The whole call fits in ``timeout_s``: past it Serve
        kills the replica, and a record would stay ``running``.
        """
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._slot_freed.set()
        if self._loop_task is not None:
            # The loop ends after its current blocking read, unless Redis is down.
            await asyncio.wait([self._loop_task], timeout=self.settings.read_block_ms / 1000 + 1)
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            finish_s = max(0.0, deadline - time.monotonic() - REQUEUE_S)
            done, left = await asyncio.wait(set(self._tasks), timeout=finish_s)
            for task in left:
                task.cancel()
            if left:
                # A cancelled job moves its record back to 'queued' (JobRunner) before the
                # caller closes the Redis client.
                await asyncio.wait(left, timeout=REQUEUE_S)
            log.info("consumer %s stopped: %d finished, %d left", self.name, len(done), len(left))
        for helper in (self._lease_task, self._cancel_task):
            if helper is not None:
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)
        if self.lease is not None:
            # What it still holds stops counting now, not when the lease runs out.
            with contextlib.suppress(*REDIS_DOWN):
                await self.lease.drop()

    def stats(self) -> ConsumerStats:
        """Counters of this consumer, its jobs in flight now, and its window's figures."""
        window = WindowFigures(
            depth=len(self.window),
            oldest_wait_s=self.window.oldest_wait_s(),
            replicas_known=len(self.window.replicas),
            stats=replace(self.window.stats),
            tenants=self.window.tenants.figures(self.window.waiting_by_tenant()),
        )
        return ConsumerStats(
            counters=replace(self.counters), in_flight=len(self.in_flight), window=window
        )

    @property
    def free_slots(self) -> int:
        """In-flight slots this consumer can fill now."""
        return self.settings.max_in_flight - len(self.in_flight)

    async def _run(self) -> None:
        await self._redis(self.store.ensure_group)
        for warning in policy.persistence_warnings(await self._redis(self.store.server_config)):
            log.warning("%s", warning)
        window = self.window
        await self._resume_own_pending()
        # The read runs beside the loop, not in it: a blocking XREADGROUP ends on a new
        # entry or its timeout, and Redis times blocked reads out on its hz timer (100 ms
        # by default, whatever BLOCK asks), so a read in the loop kept the slots that
        # jobs freed meanwhile empty for up to 100 ms. Never cancelled while the loop
        # runs (a cancellation inside a command can drop its reply: redis-py#2028).
        reading: asyncio.Future[list[Entry]] | None = None
        try:
            while not self._stopping.is_set():
                # Cleared before the plan: a job that ends from here on wakes the wait.
                self._slot_freed.clear()
                await self._redis(self._read_replicas)
                await self._start_planned(window)
                room = window.room_for(self.free_slots)
                if reading is None and room:
                    read = partial(self._next_entries, room, self.settings.read_block_ms)
                    reading = asyncio.ensure_future(self._redis(read))
                # Until a job ends, entries come, or the next plan is due.
                await self._wait_for_change(self._replan_in_s(window), reading)
                if reading is not None and reading.done():
                    entries, reading = reading.result(), None
                    for entry in entries:
                        self._claim(window, entry)
        finally:
            if reading is not None:
                # Its entries, if any, stay pending under this consumer's name: its
                # successor resumes them, or another consumer reclaims them.
                await asyncio.gather(reading, return_exceptions=True)

    def _claim(self, window: ClaimedWindow, entry: Entry) -> None:
        """Hold a claimed entry in the window; what needs no model runs at once."""
        if entry.entry_id in self.in_flight or entry.entry_id in window:
            return
        claim = policy.claim_entry(entry.entry_id, entry.fields) if entry.fields else None
        if claim is not None and not policy.is_expired(claim, time.time()):
            window.add(entry, claim)
        else:
            self._spawn(entry)  # deleted, unparsable or expired: answered without a model

    async def _start_planned(self, window: ClaimedWindow) -> None:
        """Plan against every consumer's jobs in flight (the slot lease), admit the plan's
        starts through the lease, and start those it admits; the rest wait again."""
        if not len(window):
            return
        # No replica known (or FIFO): nothing to lease, Serve's router places the jobs.
        ledger = await self._redis(self.lease.ledger) if self.lease and window.replicas else {}
        max_jobs = job_cap(
            self.settings.max_in_flight,
            self._consumers,
            len(window.replicas),
            self.settings.max_ongoing_requests,
        )
        planned = window.take(ledger, self.free_slots, max_jobs)
        placed = [(w, replica) for w, replica in planned if replica is not None]
        claims = [
            SlotClaim(replica, w.claim.adapter, window.replicas[replica].slots, max_jobs)
            for w, replica in placed
        ]
        answers = await self._admit(claims)
        admitted = dict(zip([w.entry.entry_id for w, _ in placed], answers, strict=True))
        for waiting, replica in planned:
            if replica is not None and not admitted[waiting.entry.entry_id]:
                window.refused(waiting)
                continue
            window.started(waiting)
            if replica is not None:
                self._leased.add(waiting.entry.entry_id)
            self._spawn(
                waiting.entry,
                job_id=waiting.claim.id,
                adapter=waiting.claim.adapter,
                replica=replica,
            )
        self._send_prefetches(window)

    async def _admit(self, claims: list[SlotClaim]) -> list[bool]:
        """The slot lease's answer for each claim; all refused while Redis is down (the
        jobs wait in the window, and the next plan asks again)."""
        if not claims:
            return []
        assert self.lease is not None
        try:
            return await self.lease.acquire(claims)
        except REDIS_DOWN as exc:
            log.warning("slot lease unreachable, jobs wait: %s", exc)
            return [False] * len(claims)

    async def _release(self, slot: InFlight) -> None:
        """Give the slot of an ended job back to the lease."""
        assert self.lease is not None and slot.replica is not None
        await self._redis(partial(self.lease.release, slot.replica, slot.adapter))

    async def _read_replicas(self) -> None:
        """Refresh the window's picture of the model replicas from their heartbeats (FIFO
        places nothing: it needs none)."""
        now = time.monotonic()
        # Knowing none, read again at once: a plan without replicas starts its jobs unplaced
        # (Serve's router places them, outside the slot lease), which is right only while
        # there are truly none, not in the moments after the first heartbeats land.
        if self.window.fifo or (now < self._next_replicas_read and self.window.replicas):
            return
        self._next_replicas_read = now + min(BEATS_READ_S, self.settings.heartbeat_s)
        self.window.see(await self.store.live_replicas())
        if self.lease is not None:
            self._consumers = await self.lease.holders()

    def _send_prefetches(self, window: ClaimedWindow) -> None:
        if self.prefetcher is None:
            return
        now = time.monotonic()
        for replica, adapters in window.prefetch.items():
            new = [a for a in adapters if self._prefetched.get((replica, a), 0.0) <= now]
            if not new:
                continue
            for adapter in new:
                self._prefetched[(replica, adapter)] = now + PREFETCH_REPEAT_S
            window.stats.prefetches += 1
            self._background(self._prefetch(replica, new))
        if len(self._prefetched) > 4 * window.capacity:
            self._prefetched = {k: t for k, t in self._prefetched.items() if t > now}

    async def _prefetch(self, replica: str, adapters: list[str]) -> None:
        assert self.prefetcher is not None
        try:
            await self.prefetcher.prefetch(replica, adapters)
        except Exception as exc:  # a hint: the jobs load what they need anyway
            log.debug("prefetch of %s on %s failed: %r", adapters, replica, exc)

    def _replan_in_s(self, window: ClaimedWindow) -> float | None:
        """When the loop must plan again though nothing happened: when the next waiting
        job is overdue, or soon while jobs wait beside free slots."""
        overdue_s = window.next_overdue_s
        if not len(window) or self.free_slots <= 0:
            return overdue_s
        return WINDOW_REPLAN_S if overdue_s is None else min(overdue_s, WINDOW_REPLAN_S)

    async def _wait_for_change(
        self, timeout_s: float | None, reading: asyncio.Future[list[Entry]] | None
    ) -> None:
        """Until a job ends, ``reading`` ends, or ``timeout_s`` (the replicas are reread
        at least that often)."""
        limit = min(timeout_s or REPLICAS_READ_S, REPLICAS_READ_S)
        freed: asyncio.Future[Any] = asyncio.ensure_future(self._slot_freed.wait())
        waits = {freed} if reading is None else {freed, reading}
        try:
            await asyncio.wait(waits, timeout=max(limit, 0.001), return_when=FIRST_COMPLETED)
        finally:
            freed.cancel()

    async def _resume_own_pending(self) -> None:
        """Claim the entries this consumer name took before a restart, before new ones:
        all of them, they are this consumer's already, whatever the window's size."""
        after = "0"
        while not self._stopping.is_set():
            entries = await self._redis(
                partial(
                    self.store.read_pending,
                    self.name,
                    count=self.settings.max_in_flight,
                    after=after,
                )
            )
            if not entries:
                return
            log.info("consumer %s resumes %d pending entries", self.name, len(entries))
            for entry in entries:
                self._claim(self.window, entry)
            after = entries[-1].entry_id

    async def _next_entries(self, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` entries: stale ones of dead consumers first (now and then), else
        new ones, waiting up to ``block_ms`` for them."""
        stale = await self.housekeeping.stale_entries(count)
        if stale:
            self.counters.reclaimed += len(stale)
            return stale
        return await self.store.read(self.name, count=count, block_ms=block_ms)

    def _spawn(
        self,
        entry: Entry,
        *,
        job_id: str | None = None,
        adapter: str | None = None,
        replica: str | None = None,
    ) -> None:
        if entry.entry_id in self.in_flight:
            return  # a reclaim handed back an entry this consumer already runs
        slot = InFlight(entry.entry_id, job_id=job_id, adapter=adapter, replica=replica)
        self.in_flight[entry.entry_id] = slot
        self.counters.started += 1
        self._background(self._run_entry(entry, slot))

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_entry(self, entry: Entry, slot: InFlight) -> None:
        try:
            await self.runner.run(entry, slot)
            self.counters.finished += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacknowledged: its lease lapses and the entry is reclaimed and retried.
            self.counters.errors += 1
            log.exception(
                "job entry %s could not be completed; left pending",
                entry.entry_id,
                extra=job_extra(slot.job_id, slot.adapter),
            )
        finally:
            self.in_flight.pop(entry.entry_id, None)
            self.window.tenants.ended(entry.entry_id, slot.completion_tokens)
            if slot.served_by is not None:
                self.window.saw(*slot.served_by)
            if entry.entry_id in self._leased:
                self._leased.discard(entry.entry_id)
                self._background(self._release(slot))
            self._slot_freed.set()

    async def _keep_leases(self) -> None:
        """Renew the leases of the entries this consumer holds, every ``lease_renew_s``."""
        # Ends on the flag too: a cancel that lands in a Redis command can be lost.
        while not self._stopping.is_set():
            try:
                await self._renew_once()
            except REDIS_DOWN as exc:
                log.warning("lease renewal failed (redis unreachable): %s", exc)
            await asyncio.sleep(self.settings.lease_renew_s)

    async def _renew_once(self) -> None:
        # The window's entries too: they are claimed, and a lapsed lease hands them over.
        waiting = self.window.entry_ids()
        lost = await self.store.renew(self.name, [*self.in_flight, *waiting])
        if self.lease is not None:
            await self.lease.renew()
        if lost:
            log.warning("consumer %s lost the lease of %s", self.name, lost)

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` through Redis outages; re-create the group if it was deleted."""
        while True:
            try:
                return await until_reachable(
                    call, f"consumer {self.name}", recovered=self.housekeeping.redis_returned
                )
            except aioredis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group of %s is gone; creating it again", self.store.keys.jobs)
                await until_reachable(self.store.ensure_group, f"consumer {self.name}")
