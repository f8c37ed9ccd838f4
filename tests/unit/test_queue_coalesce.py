"""Group commit of concurrent calls: one batch per tick, one outcome per call."""

from __future__ import annotations

import asyncio

import pytest

from workers.queue.coalesce import Coalescer


class Recorder:
    """A batch runner that records its batches; ``fail`` names ops that fail alone."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.gate: asyncio.Event | None = None

    async def __call__(self, ops: list[int]) -> list[int | BaseException]:
        self.batches.append(list(ops))
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(op) if op in self.fail else op * 10 for op in ops]


async def test_calls_of_one_tick_go_out_as_one_batch() -> None:
    runner = Recorder()
    coalescer = Coalescer(runner, max_batch=100)
    results = await asyncio.gather(*(coalescer.call(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert runner.batches == [[0, 1, 2, 3, 4]]
    assert (coalescer.batches, coalescer.ops) == (1, 5)


async def test_calls_made_while_a_batch_runs_form_the_next_one() -> None:
    runner = Recorder()
    runner.gate = asyncio.Event()
    coalescer = Coalescer(runner, max_batch=100)
    first = asyncio.gather(*(coalescer.call(i) for i in range(2)))
    await asyncio.sleep(0.01)  # the first batch is in flight, held at the gate
    second = asyncio.gather(*(coalescer.call(i) for i in range(2, 5)))
    await asyncio.sleep(0.01)
    assert runner.batches == [[0, 1]]  # one batch at a time
    runner.gate.set()
    assert await first == [0, 10]
    assert await second == [20, 30, 40]
    assert runner.batches == [[0, 1], [2, 3, 4]]


async def test_batches_are_capped() -> None:
    runner = Recorder()
    coalescer = Coalescer(runner, max_batch=2)
    assert await asyncio.gather(*(coalescer.call(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert runner.batches == [[0, 1], [2, 3], [4]]


async def test_an_error_of_one_op_is_raised_in_its_call_only() -> None:
    coalescer = Coalescer(Recorder(fail=frozenset({1})), max_batch=100)
    results = await asyncio.gather(*(coalescer.call(i) for i in range(3)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], ValueError)


async def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_runs() -> None:
    calls = 0

    async def flaky(ops: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return list(ops)

    coalescer = Coalescer(flaky, max_batch=100)
    results = await asyncio.gather(*(coalescer.call(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await coalescer.call(7) == 7  # e.g. a caller's retry after the outage


async def test_a_call_cancelled_before_its_batch_went_out_never_runs() -> None:
    runner = Recorder()
    runner.gate = asyncio.Event()
    coalescer = Coalescer(runner, max_batch=100)
    first = asyncio.ensure_future(coalescer.call(0))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(coalescer.call(1))
    kept = asyncio.ensure_future(coalescer.call(2))
    await asyncio.sleep(0.01)
    waiting.cancel()
    runner.gate.set()
    assert await first == 0 and await kept == 20
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert runner.batches == [[0], [2]]
