"""The replicas' background loop (metrics, heartbeat): ticks, quiet failures, a sure stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from workers.serve.periodic import Periodic

INTERVAL_S = 0.01


async def test_steps_repeat_until_stopped() -> None:
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1

    loop = Periodic(step, INTERVAL_S, "counting")
    loop.start()
    await asyncio.sleep(INTERVAL_S * 20)
    await loop.stop()
    done = steps
    await asyncio.sleep(INTERVAL_S * 5)
    assert 3 <= done == steps


async def test_a_streak_of_failures_is_logged_once_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes = [ConnectionError("down")] * 5 + [None] * 3 + [RuntimeError("again")] * 4
    calls = 0
    done = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        outcome = outcomes[min(calls, len(outcomes) - 1)]
        calls += 1
        if calls == len(outcomes):
            done.set()
        if outcome is not None:
            raise outcome

    loop = Periodic(step, INTERVAL_S, "report")
    with caplog.at_level(logging.INFO, logger="workers.serve.periodic"):
        loop.start()
        await asyncio.wait_for(done.wait(), 5)
        await loop.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        f"report failed, retried every {INTERVAL_S}s: ConnectionError('down')",
        "report works again",
        f"report failed, retried every {INTERVAL_S}s: RuntimeError('again')",
    ]


async def test_stop_ends_the_loop_when_the_step_swallows_the_cancel() -> None:
    # redis-py's asyncio client can lose a cancellation inside a command (#2028).
    swallowed = 0
    entered = asyncio.Event()

    async def step() -> None:
        nonlocal swallowed
        entered.set()
        try:
            await asyncio.sleep(INTERVAL_S * 10)
        except asyncio.CancelledError:
            swallowed += 1
            current = asyncio.current_task()
            assert current is not None
            current.uncancel()

    loop = Periodic(step, INTERVAL_S, "stubborn")
    loop.start()
    await entered.wait()
    await asyncio.wait_for(loop.stop(), 2)
    assert swallowed == 1
