"""A replica's informational background loop: one step every few seconds until stopped.

The metrics reporters and the heartbeat run on it. Nothing in the job path depends on
them, so a failing step never ends the loop: the next tick tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` now and then every ``interval_s`` in a background task, until :meth:`stop`.

    A failed step is logged once per streak of failures, not once per tick, so that a
    Redis outage does not flood the logs. :meth:`stop` sets a flag as well as cancelling
    the task: redis-py's asyncio client can lose a cancellation that lands inside a
    command (redis/redis-py#2028), and the flag still ends the loop at its next tick.
    """

    def __init__(self, step: Callable[[], Awaitable[None]], interval_s: float, what: str) -> None:
        self.step = step
        self.interval_s = interval_s
        self.what = what
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """End the loop and wait for it (a step under way is cancelled)."""
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        failing = False
        while not self._stopped.is_set():
            try:
                await self.step()
            except Exception as exc:
                if not failing:
                    log.warning("%s failed, retried every %ss: %r", self.what, self.interval_s, exc)
                failing = True
            else:
                if failing:
                    log.info("%s works again", self.what)
                failing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.interval_s)
