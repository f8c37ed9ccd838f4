"""The slot lease on the real Redis: several consumers' planners share model replicas, and
no replica ever holds jobs of more distinct adapters than its slots, or more jobs than its
cap, whatever the planners' views (fresh or stale) and however their plans interleave."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Keys
from tests.integration.serve.conftest import delete_prefix
from workers.queue.slot_lease import SlotClaim, SlotLease
from workers.scheduling.planner import Limits, ReplicaView, WindowJob, plan
from workers.scheduling.slot_ledger import Ledger

ADAPTERS: list[str | None] = [None, "a", "b", "c", "d", "e"]


@dataclass(frozen=True)
class Replica:
    id: str
    slots: int
    cap: int
    warm: tuple[str, ...]


@dataclass
class Planner:
    """One consumer: its window, its lease, and the ledger it last read."""

    lease: SlotLease
    window: list[WindowJob]
    view: Ledger | None = None  # None: never read


@dataclass(frozen=True)
class Running:
    planner: int
    replica: str
    adapter: str | None


# A step: ("plan", planner, read a fresh ledger first) or ("end", running job index, _).
Step = tuple[str, int, bool]
Scenario = tuple[list[Replica], list[list[str | None]], list[Step]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    replicas = [
        Replica(
            f"r{i}",
            slots := draw(st.integers(1, 3)),
            draw(st.integers(1, 6)),
            tuple(draw(st.lists(st.sampled_from(ADAPTERS[1:]), unique=True, max_size=slots))),
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    planners = draw(st.integers(2, 4))
    windows = [draw(st.lists(st.sampled_from(ADAPTERS), max_size=12)) for _ in range(planners)]
    steps = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("plan"), st.integers(0, planners - 1), st.booleans()),
                st.tuples(st.just("end"), st.integers(0, 100), st.just(False)),
            ),
            max_size=25,
        )
    )
    return replicas, windows, steps


def check(replicas: list[Replica], running: list[Running]) -> None:
    for replica in replicas:
        here = [job.adapter for job in running if job.replica == replica.id]
        distinct = {adapter for adapter in here if adapter is not None}
        assert len(distinct) <= replica.slots, (replica, here)
        assert len(here) <= replica.cap, (replica, here)


async def play(url: str, scenario: Scenario) -> None:
    replicas, windows, steps = scenario
    client = aioredis.Redis.from_url(url)
    keys = Keys(f"loraqtest:slots{uuid.uuid4().hex[:10]}")
    planners = [
        Planner(
            SlotLease(client, keys, f"consumer-{i}", lease_s=60),
            [WindowJob(f"p{i}-{k}", adapter, 0, 0.0) for k, adapter in enumerate(window)],
        )
        for i, window in enumerate(windows)
    ]
    by_id = {replica.id: replica for replica in replicas}
    running: list[Running] = []
    try:
        for action, index, fresh in steps:
            if action == "end":
                if running:
                    job = running.pop(index % len(running))
                    await planners[job.planner].lease.release(job.replica, job.adapter)
                continue
            planner = planners[index]
            if fresh or planner.view is None:
                planner.view = await planner.lease.ledger()
            view = planner.view
            result = plan(
                planner.window,
                [ReplicaView(r.id, r.slots, r.warm, view.get(r.id, Counter())) for r in replicas],
                Limits(free=8, max_jobs=max(r.cap for r in replicas), max_passover_s=5.0),
                now=1.0,
            )
            adapters = {job.key: job.adapter for job in planner.window}
            claims = [
                SlotClaim(
                    str(d.replica),
                    adapters[d.key],
                    by_id[str(d.replica)].slots,
                    by_id[str(d.replica)].cap,
                )
                for d in result.dispatch
            ]
            admitted = await planner.lease.acquire(claims)
            for dispatch, claim, ok in zip(result.dispatch, claims, admitted, strict=True):
                if ok:
                    running.append(Running(index, claim.replica, claim.adapter))
                    planner.window = [j for j in planner.window if j.key != dispatch.key]
            check(replicas, running)
            # The ledger every planner reads is exactly what runs.
            ledger = await planner.lease.ledger()
            expected: dict[str, Counter[str | None]] = {}
            for job in running:
                expected.setdefault(job.replica, Counter())[job.adapter] += 1
            assert ledger == expected
    finally:
        await client.aclose()
        delete_prefix(url, keys.prefix)


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_planners_sharing_replicas_never_exceed_slots_or_capacity(
    redis_url: str, scenario: Scenario
) -> None:
    asyncio.run(play(redis_url, scenario))


async def test_a_dead_consumers_slots_free_when_its_lease_runs_out(
    redis_url: str, prefix: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    dead = SlotLease(client, keys, "consumer-0", lease_s=0.3)
    alive = SlotLease(client, keys, "consumer-1", lease_s=60)
    try:
        assert await dead.acquire([SlotClaim("r0", "a", 1, 10)]) == [True]
        # One slot, held by another consumer's adapter: refused, until that lease lapses.
        assert await alive.acquire([SlotClaim("r0", "b", 1, 10)]) == [False]
        time.sleep(0.4)
        assert await alive.ledger() == {}
        assert await alive.acquire([SlotClaim("r0", "b", 1, 10)]) == [True]
        assert await alive.holders() == 1
        # A consumer that stops lets go at once; the same adapter shares its slot.
        assert await alive.acquire([SlotClaim("r0", "b", 1, 10)]) == [True]
        await alive.drop()
        assert await dead.acquire([SlotClaim("r0", "c", 1, 10)]) == [True]
    finally:
        await client.aclose()
