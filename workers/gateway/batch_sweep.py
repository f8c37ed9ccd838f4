"""Batches move on with nobody reading them: a background sweep in each gateway replica.

A batch's counts and status are refreshed from its jobs when someone reads it (``GET
/v1/batches/{id}``, the listing). Without a sweep, a client that submits a batch and
comes back a day later finds it ``in_progress`` until that read, its output files not
yet written, and a webhook-less operator watching ``{P}:batch:{id}`` sees nothing move.
The sweep refreshes every batch that has not ended (the listing ``{P}:batches:open``,
so its cost follows the open batches, not every batch kept), every
:data:`SWEEP_INTERVAL_S`:
``in_progress`` → ``finalizing`` once its jobs have ended, then ``completed`` (or
``expired``: a job whose batch's ``expires_at`` passed before it started) once its files
are written.

It is the very refresh a read does, so replicas sweep side by side safely: a status moves
only from the status the update script expects, and one replica at a time writes a
batch's files (a lease).
"""

from __future__ import annotations

from workers.gateway.batches import BatchService
from workers.serve.periodic import Periodic

SWEEP_INTERVAL_S = 5.0
# Batch ids read from the listing per round trip.
PAGE = 100


class BatchSweep:
    """Refreshes every open batch of ``service``'s queue, every ``interval_s``."""

    def __init__(self, service: BatchService, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.service = service
        self._loop = Periodic(self.sweep_once, interval_s, "batch sweep")
        self._adopted = False

    def start(self) -> None:
        """Start sweeping on the running event loop."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop sweeping (a refresh under way is cancelled; the next read redoes it)."""
        await self._loop.stop()

    async def sweep_once(self) -> None:
        """Refresh each open batch; the first round also lists among the open batches
        those created before v1.4, when there was no such listing."""
        if not self._adopted:
            await self._adopt()
            self._adopted = True
        store = self.service.store
        # The ids first, then the refreshes: a refresh that ends a batch takes it out of
        # the listing, which would shift the pages under a reader going by position.
        open_ids: list[str] = []
        while ids := await store.open_ids(start=len(open_ids), count=PAGE):
            open_ids += ids
        ended: list[str] = []
        for batch_id in open_ids:
            stored = await store.get_batch(batch_id)
            if stored is None or stored.batch.status.is_final:
                ended.append(batch_id)
            else:
                await self.service.refresh(stored)
        await store.closed(ended)

    async def _adopt(self) -> None:
        store = self.service.store
        start = 0
        while ids := await store.listed(None, after=None, start=start, count=PAGE):
            start += len(ids)
            for batch_id in ids:
                stored = await store.get_batch(batch_id)
                if stored is not None and not stored.batch.status.is_final:
                    await store.reopen(stored.batch)
