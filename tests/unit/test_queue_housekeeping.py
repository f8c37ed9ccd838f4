"""When a consumer reclaims other consumers' entries: not while Redis just came back."""

from __future__ import annotations

from typing import cast

from workers.queue.housekeeping import Housekeeping
from workers.queue.store import Entry, JobStore, until_reachable

VISIBILITY_S = 4.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Store:
    """Records the reclaims asked of it; every scan completes in one call."""

    def __init__(self, clock: Clock) -> None:
        self.reclaims: list[float] = []
        self.clock = clock

    async def trim(self) -> int:
        return 0

    async def reclaim(
        self, consumer: str, *, min_idle_ms: int, count: int, cursor: str = "0-0"
    ) -> tuple[str, list[Entry], list[str]]:
        assert min_idle_ms == VISIBILITY_S * 1000
        self.reclaims.append(self.clock.now)
        return "0-0", [Entry("1-0", {"id": "j"})], []


def housekeeping() -> tuple[Housekeeping, Store, Clock]:
    clock = Clock()
    store = Store(clock)
    keeper = Housekeeping(
        cast(JobStore, store),
        "c1",
        trim_interval_s=60.0,
        visibility_timeout_s=VISIBILITY_S,
        clock=clock,
    )
    return keeper, store, clock


async def test_reclaims_run_every_half_visibility_timeout() -> None:
    keeper, store, clock = housekeeping()
    for _ in range(9):
        await keeper.stale_entries(10)
        clock.now += 1.0
    assert store.reclaims == [100.0, 102.0, 104.0, 106.0, 108.0]


async def test_no_reclaim_for_one_visibility_timeout_after_redis_returns() -> None:
    keeper, store, clock = housekeeping()
    assert await keeper.stale_entries(10)
    clock.now = 103.0
    keeper.redis_returned()
    while clock.now < 103.0 + VISIBILITY_S:
        assert await keeper.stale_entries(10) == []
        clock.now += 0.5
    assert await keeper.stale_entries(10)
    assert store.reclaims == [100.0, 107.0]


async def test_until_reachable_says_when_redis_answers_again() -> None:
    replies: list[Exception | str] = [ConnectionError("down"), ConnectionError("down"), "ok"]
    returned: list[str] = []

    async def call() -> str:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    assert await until_reachable(call, "test", recovered=lambda: returned.append("back")) == "ok"
    assert returned == ["back"]
    replies.append("ok again")
    assert await until_reachable(call, "test", recovered=lambda: returned.append("back")) == (
        "ok again"
    )
    assert returned == ["back"], "no outage, no call"
