"""What a consumer does for the whole group now and then, between its reads: trim the
acknowledged entries off the stream, and take over the entries of consumers that died."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workers.queue.store import Entry, JobStore

log = logging.getLogger(__name__)


class Housekeeping:
    """Trims every ``trim_interval_s``; reclaims the entries idle past the visibility
    timeout, one pass over the group's pending list every half visibility timeout (a pass
    may span several calls: the XAUTOCLAIM cursor is kept between them)."""

    def __init__(
        self,
        store: JobStore,
        name: str,
        *,
        trim_interval_s: float,
        visibility_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.name = name
        self.trim_interval_s = trim_interval_s
        self.visibility_timeout_s = visibility_timeout_s
        self._clock = clock
        self._cursor = "0-0"
        self._next_reclaim = 0.0
        self._next_trim = 0.0

    def redis_returned(self) -> None:
        """Redis was unreachable and answers again: no reclaim for one visibility timeout.

        An entry's idle time grew through the outage for every holder alike, since none
        could renew its lease; the live ones renew within ``lease_renew_s`` (shorter than
        the timeout) of Redis' return, so after one timeout only the dead ones' entries
        are still idle past it. Reclaiming at once would run every job in flight again,
        and the holders' answers, held through the outage, would race the new attempts.
        """
        self._next_reclaim = max(self._next_reclaim, self._clock() + self.visibility_timeout_s)

    async def stale_entries(self, count: int) -> list[Entry]:
        """Up to ``count`` entries of dead consumers, claimed for this one now, when a
        reclaim is due (after a trim, when that is due); none otherwise."""
        now = self._clock()
        if now >= self._next_trim:
            trimmed = await self.store.trim()
            log.debug("consumer %s trimmed %d acknowledged entries", self.name, trimmed)
            self._next_trim = now + self.trim_interval_s
        if now < self._next_reclaim:
            return []
        self._cursor, entries, deleted = await self.store.reclaim(
            self.name,
            min_idle_ms=int(self.visibility_timeout_s * 1000),
            count=count,
            cursor=self._cursor,
        )
        if deleted:
            log.warning("entries deleted before they were processed: %s", deleted)
        if self._cursor == "0-0":
            self._next_reclaim = now + self.visibility_timeout_s / 2
        if entries:
            log.info("consumer %s reclaimed %d stale entries", self.name, len(entries))
        return entries
