"""Grouped handle calls, the consumer's side: many jobs' requests in one streaming call.

A Serve handle call costs the caller about a millisecond of CPU, whatever it carries; a
consumer that makes one per job tops out below the model it feeds. The requests started
in one event-loop tick for the same place (target replica, routing model id) therefore go
out as one ``stream_many`` call, and what comes back is handed to each request's own
:class:`Member`, so that every job still reads its own stream of items.

What ``stream_many`` sends back (see :mod:`workers.serve.stream_groups`): first the id of
the replica that serves the call, then lists of ``(index, item)`` pairs, an item being a
:class:`TextDelta`, the request's :class:`GenerationOutput` (its last) or the
:class:`EngineError` that ended it. Pure asyncio; the Ray side is in
:mod:`workers.serve.dispatch`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest, TextDelta

Item = TextDelta | GenerationOutput
# One message of a stream_many call: the replica's id first, then batches of items.
Message = str | list[tuple[int, Item | EngineError]]
# Where a group goes: the target replica (None: the router chooses) and the multiplexed
# model id the call carries ("" for none).
GroupKey = tuple[str | None, str]


class Member:
    """One request of a group call: the items the replica sent for it, in order."""

    def __init__(self, key: GroupKey, request: GenerationRequest) -> None:
        self.key = key
        self.request = request
        self.index = -1  # its place in the call, once the group is sent
        self.call: GroupCall | None = None
        self.done = False  # its last item (output or error) has arrived
        self.closed = False  # its reader stopped listening
        self._items: asyncio.Queue[Item | BaseException] = asyncio.Queue()

    async def next(self) -> Item:
        """The next item; raises the error that ended the request (or the whole call).

        Text that arrived together comes as one delta, and text followed by the output
        comes as the output alone (it holds all the text): each delta costs the job a
        chunk write, and its waiters a read, that the end would make anyway.
        """
        item = await self._items.get()
        while isinstance(item, TextDelta) and not self._items.empty():
            following = self._items.get_nowait()
            item = item.then(following) if isinstance(following, TextDelta) else following
        if isinstance(item, BaseException):
            raise item
        return item

    def put(self, item: Item | BaseException) -> None:
        """Hand ``item`` to the reader (nothing, once it stopped listening or ended)."""
        if self.closed or self.done:
            return
        self.done = not isinstance(item, TextDelta)
        self._items.put_nowait(item)


class GroupCall:
    """The requests sent as one call, and what is known of the replica serving them."""

    def __init__(self, key: GroupKey, members: list[Member]) -> None:
        self.call_id = uuid.uuid4().hex
        self.key = key
        self.members = members
        self.replica: str | None = None
        self._started = asyncio.Event()  # set on the replica's id, or on the call's end
        for index, member in enumerate(members):
            member.index, member.call = index, self

    @property
    def requests(self) -> list[GenerationRequest]:
        """The requests, in index order."""
        return [member.request for member in self.members]

    @property
    def listening(self) -> list[Member]:
        """Members still waiting for items and still read."""
        return [m for m in self.members if not m.done and not m.closed]

    def feed(self, message: Message) -> None:
        """Take one message of the call (see the module docstring)."""
        if isinstance(message, str):
            self.replica = message
            self._started.set()
            return
        for index, item in message:
            if 0 <= index < len(self.members):
                self.members[index].put(item)

    def fail(self, error: BaseException) -> None:
        """The whole call failed (the replica died): every request still waiting fails."""
        for member in self.members:
            member.put(error)
        self._started.set()

    def end(self) -> None:
        """The call's stream ended: a request it left without its output fails."""
        self.fail(RuntimeError("the model's group call ended without this request's output"))

    async def served_by(self) -> str | None:
        """The replica serving the call, once it said so (``None``: the call ended first)."""
        await self._started.wait()
        return self.replica


class CallGrouper:
    """Collects requests per :data:`GroupKey` and hands them to ``send`` as groups.

    A group is sent on the loop's next tick after its first request (or ``wait_s`` after
    it), or at once when it holds ``max_size`` requests.
    """

    def __init__(
        self, send: Callable[[GroupCall], None], *, max_size: int, wait_s: float = 0.0
    ) -> None:
        self._send = send
        self.max_size = max_size
        self.wait_s = wait_s
        self._pending: dict[GroupKey, list[Member]] = {}
        self._timers: dict[GroupKey, asyncio.Handle] = {}

    def join(self, key: GroupKey, request: GenerationRequest) -> Member:
        """Add ``request`` to the group of ``key`` being collected."""
        member = Member(key, request)
        members = self._pending.setdefault(key, [])
        members.append(member)
        if len(members) >= self.max_size:
            self._flush(key)
        elif len(members) == 1:
            loop = asyncio.get_running_loop()
            if self.wait_s > 0:
                self._timers[key] = loop.call_later(self.wait_s, self._flush, key)
            else:
                self._timers[key] = loop.call_soon(self._flush, key)
        return member

    def discard(self, member: Member) -> bool:
        """Take back a request whose group has not been sent; ``False`` if it was sent."""
        members = self._pending.get(member.key, [])
        if member not in members:
            return False
        members.remove(member)
        if not members:
            self._pending.pop(member.key, None)
            timer = self._timers.pop(member.key, None)
            if timer is not None:
                timer.cancel()
        return True

    def _flush(self, key: GroupKey) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        members = self._pending.pop(key, [])
        if members:
            self._send(GroupCall(key, members))
