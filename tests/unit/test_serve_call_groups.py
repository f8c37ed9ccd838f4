"""Grouped handle calls without Ray: what is grouped, how items reach each request, and
how the replica side runs, fails and cancels the requests of one call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from schemas import ErrorType
from schemas.records import TokenLogprob
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest, TextDelta
from workers.serve.call_groups import CallGrouper, GroupCall, Member
from workers.serve.stream_groups import Batch, StreamGroups


def request(name: str) -> GenerationRequest:
    return GenerationRequest(None, name, request_id=name)


def output(text: str) -> GenerationOutput:
    return GenerationOutput(text, "stop", 1, 1, None)


class Sent:
    """The calls a grouper sent."""

    def __init__(self) -> None:
        self.calls: list[GroupCall] = []

    def __call__(self, call: GroupCall) -> None:
        self.calls.append(call)

    def names(self) -> list[list[str | None]]:
        return [[r.prompt for r in call.requests] for call in self.calls]


async def test_requests_of_one_tick_and_one_place_share_a_call() -> None:
    sent = Sent()
    grouper = CallGrouper(sent, max_size=10)
    for name, key in (("a", ("r1", "")), ("b", ("r1", "")), ("c", ("r2", "")), ("d", ("r1", "x"))):
        grouper.join(key, request(name))
    assert sent.calls == []  # sent on the next tick, with whatever joined in this one
    await asyncio.sleep(0)
    assert sorted(sent.names()) == [["a", "b"], ["c"], ["d"]]
    grouper.join(("r1", ""), request("e"))
    await asyncio.sleep(0)
    assert sent.names()[-1] == ["e"]  # a later tick: a call of its own


async def test_a_full_group_goes_at_once_and_a_wait_collects_longer() -> None:
    sent = Sent()
    grouper = CallGrouper(sent, max_size=2, wait_s=0.05)
    for name in "abc":
        grouper.join((None, ""), request(name))
    assert sent.names() == [["a", "b"]]
    await asyncio.sleep(0)
    assert sent.names() == [["a", "b"]]  # "c" waits out wait_s for company
    await asyncio.sleep(0.1)
    assert sent.names() == [["a", "b"], ["c"]]


async def test_a_request_taken_back_before_its_call_is_not_sent() -> None:
    sent = Sent()
    grouper = CallGrouper(sent, max_size=10)
    kept = grouper.join((None, ""), request("a"))
    gone = grouper.join((None, ""), request("b"))
    assert grouper.discard(gone)
    alone = grouper.join(("r", ""), request("c"))
    assert grouper.discard(alone)
    await asyncio.sleep(0)
    assert sent.names() == [["a"]]
    assert (kept.index, kept.call) == (0, sent.calls[0])
    assert not grouper.discard(kept)  # sent already


async def test_items_reach_their_own_request_in_order() -> None:
    a, b = Member((None, ""), request("a")), Member((None, ""), request("b"))
    call = GroupCall((None, ""), [a, b])
    call.feed("replica-1")
    assert await call.served_by() == "replica-1"
    call.feed([(1, TextDelta("B1")), (0, TextDelta("A1"))])
    assert await a.next() == TextDelta("A1")
    call.feed([(0, output("A1A2")), (1, TextDelta("B2"))])
    assert await a.next() == output("A1A2") and a.done
    # Text that arrived together is one delta; text followed by the output, the output.
    assert await b.next() == TextDelta("B1B2")
    call.feed([(1, TextDelta("B3")), (1, output("B1B2B3"))])
    assert await b.next() == output("B1B2B3")
    assert call.listening == []


async def test_joined_deltas_keep_their_tokens_logprobs_in_order() -> None:
    first, second = (TokenLogprob(token_id=i, token=t, logprob=-1.0) for i, t in enumerate("xy"))
    member = Member((None, ""), request("a"))
    GroupCall((None, ""), [member]).feed(
        [(0, TextDelta("x", [first])), (0, TextDelta("", [])), (0, TextDelta("y", [second]))]
    )
    assert await member.next() == TextDelta("xy", [first, second])
    assert TextDelta("a").then(TextDelta("b")) == TextDelta("ab", None)


async def test_an_error_of_one_request_fails_it_alone() -> None:
    a, b = Member((None, ""), request("a")), Member((None, ""), request("b"))
    call = GroupCall((None, ""), [a, b])
    call.feed([(0, EngineError(ErrorType.VALIDATION, "prompt too long"))])
    with pytest.raises(EngineError) as raised:
        await a.next()
    assert raised.value.type is ErrorType.VALIDATION
    call.feed([(1, output("fine"))])
    assert await b.next() == output("fine")


async def test_a_failed_call_fails_each_request_still_waiting() -> None:
    a, b, c = (Member((None, ""), request(n)) for n in "abc")
    call = GroupCall((None, ""), [a, b, c])
    call.feed([(0, output("done"))])
    c.closed = True  # its reader went away (cancelled)
    call.fail(ConnectionError("replica died"))
    assert await a.next() == output("done")
    with pytest.raises(ConnectionError):
        await b.next()
    assert c._items.empty()
    assert await call.served_by() is None  # a cancel waiting for the replica gives up


async def test_a_call_that_ends_early_fails_what_it_left() -> None:
    a = Member((None, ""), request("a"))
    call = GroupCall((None, ""), [a])
    call.feed([(0, TextDelta("x"))])
    call.end()
    with pytest.raises(RuntimeError, match="without this request's output"):
        await a.next()


async def fake_stream(
    text: str, *, delay_s: float = 0.0
) -> AsyncIterator[TextDelta | GenerationOutput]:
    for char in text:
        await asyncio.sleep(delay_s)
        yield TextDelta(char)
    if text == "boom":
        raise EngineError(ErrorType.VALIDATION, "bad request")
    if text == "oops":
        raise ValueError("unexpected")
    yield output(text)


async def collect(messages: AsyncIterator[str | Batch]) -> tuple[str, dict[int, list[object]]]:
    header = await anext(messages)
    assert isinstance(header, str)
    return header, await collect_rest(messages)


async def test_the_replica_side_streams_every_request_and_batches_what_is_ready() -> None:
    groups = StreamGroups()
    streams = [fake_stream("ab"), fake_stream("boom"), fake_stream("oops"), fake_stream("c")]
    messages = groups.run("call-1", "replica-1", streams)
    header, items = await collect(messages)
    assert header == "replica-1"
    assert items[0][-1] == output("ab") and items[3][-1] == output("c")
    failed = items[1][-1]
    assert isinstance(failed, EngineError) and failed.type is ErrorType.VALIDATION
    internal = items[2][-1]
    assert isinstance(internal, EngineError) and internal.type is ErrorType.INTERNAL
    assert "ValueError: unexpected" in internal.message
    assert (groups.counters.calls, groups.counters.requests) == (1, 4)


async def test_the_replica_side_cancels_one_request_of_a_call() -> None:
    groups = StreamGroups()
    stopped = asyncio.Event()

    async def endless() -> AsyncIterator[TextDelta | GenerationOutput]:
        try:
            while True:
                await asyncio.sleep(0.01)
                yield TextDelta(".")
        finally:
            stopped.set()  # what stops an engine row

    messages = groups.run("call-2", "replica-1", [endless(), fake_stream("abc", delay_s=0.05)])
    assert await anext(messages) == "replica-1"
    await asyncio.sleep(0.03)  # a cancel comes a round trip after the replica's id
    assert not groups.cancel("other-call", 0)
    assert groups.cancel("call-2", 0)
    seen = await collect_rest(messages)
    assert stopped.is_set()
    assert seen[1][-1] == output("abc")  # the other request ran to its end
    assert not groups.cancel("call-2", 1)  # the call is over
    assert groups.counters.cancels == 1


async def test_a_request_cancelled_before_it_began_still_ends_the_call() -> None:
    groups = StreamGroups()
    messages = groups.run("call-3", "replica-1", [fake_stream("a"), fake_stream("b")])
    assert await anext(messages) == "replica-1"
    assert groups.cancel("call-3", 0)  # before its task took a step
    items = await asyncio.wait_for(collect_rest(messages), 5)
    assert list(items) == [1]


async def collect_rest(messages: AsyncIterator[str | Batch]) -> dict[int, list[object]]:
    items: dict[int, list[object]] = {}
    async for message in messages:
        assert isinstance(message, list)
        for index, item in message:
            items.setdefault(index, []).append(item)
    return items
