"""Passes a client's cancel request on to the running job it names.

A request is a key the client sets (:meth:`JobStore.cancel_requested` reads them, one
pipelined EXISTS per running job); the watcher looks every ``cancel_poll_s`` and stops
the job's generation, which then ends the job as cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from workers.errors import REDIS_DOWN
from workers.logs import job_extra
from workers.queue.runner import InFlight
from workers.queue.store import JobStore

log = logging.getLogger(__name__)


class CancelWatcher:
    """Looks for cancel requests of the jobs ``running()`` returns, every ``poll_s``."""

    def __init__(
        self, store: JobStore, running: Callable[[], Collection[InFlight]], poll_s: float
    ) -> None:
        self.store = store
        self.running = running
        self.poll_s = poll_s

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set (checked each poll too: a cancellation that lands in
        a Redis command can be lost)."""
        while not stopping.is_set():
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except REDIS_DOWN as exc:
                log.warning("looking for cancel requests failed (redis unreachable): %s", exc)

    async def check(self) -> None:
        """Stop the generation of each running job whose cancellation was requested."""
        running = [slot for slot in self.running() if slot.job_id is not None]
        cancelled = await self.store.cancel_requested([str(slot.job_id) for slot in running])
        for slot in running:
            if slot.job_id in cancelled and not slot.cancel_requested:
                log.debug(
                    "job %s: cancellation requested",
                    slot.job_id,
                    extra=job_extra(slot.job_id, slot.adapter),
                )
                slot.request_cancel()
