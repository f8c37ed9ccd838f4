"""How a consumer reaches the LoRAModel deployment: grouped streaming handle calls, and
prefetch hints to the replica the scheduler will send an adapter's jobs to."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from workers.engine.requests import GenerationOutput, GenerationRequest, TextDelta
from workers.serve.call_groups import CallGrouper, GroupCall, GroupKey, Member

log = logging.getLogger(__name__)


class ServeDispatcher:
    """Sends requests to LoRAModel in groups: one ``stream_many`` call per group.

    Requests started in the same event-loop tick (or within ``group_wait_ms``) that go to
    the same place share a call, up to ``max_group`` of them; each keeps a stream of its
    own (:meth:`stream`). The place is the scheduler's target replica and the adapter as
    Serve's multiplexed model id: that id lets Serve's router prefer a replica that has
    the adapter warm; base-model requests carry none and are balanced over all replicas.
    With ``affinity=False`` no request carries one (the baseline the affinity test
    compares), so requests of all adapters share calls.
    """

    def __init__(
        self,
        handle: DeploymentHandle[Any],
        *,
        affinity: bool = True,
        max_group: int = 32,
        group_wait_ms: float = 0.0,
    ) -> None:
        self.handle = handle
        self.affinity = affinity
        self._grouper = CallGrouper(self._start, max_size=max_group, wait_s=group_wait_ms / 1000)
        self._responses: dict[str, DeploymentResponseGenerator[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0

    def _handle_for(self, model_id: str) -> DeploymentHandle[Any]:
        # By value over Serve's inter-deployment gRPC rather than through the object store:
        # each streamed message is then a message, not an object, a cost per message less
        # (bench/queue.py; docs/SERVING.md, "Cost of the queue").
        handle = self.handle.options(stream=True, _by_reference=False)
        return handle.options(multiplexed_model_id=model_id) if model_id else handle

    def _key(self, request: GenerationRequest) -> GroupKey:
        model_id = (request.adapter or "") if self.affinity else ""
        return (request.target_replica, model_id)

    async def prefetch(self, replica: str, adapters: list[str]) -> None:
        """Ask ``replica`` to warm ``adapters`` (routed there by ``target_replica``)."""
        await self.handle.options(_by_reference=False).prefetch.remote(
            adapters, target_replica=replica
        )

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[TextDelta | GenerationOutput, None]:
        """Text chunks while ``request`` generates, then its output.

        Closing this generator early (the job was cancelled) stops the request on the
        replica, and only that request of its group.
        """
        member = self._grouper.join(self._key(request), request)
        try:
            while True:
                item = await member.next()
                yield item
                if isinstance(item, GenerationOutput):
                    return
        finally:
            self._leave(member)

    def _start(self, call: GroupCall) -> None:
        self._background(self._run(call))

    async def _run(self, call: GroupCall) -> None:
        """Send ``call`` and hand what comes back to its members."""
        if not call.listening:
            call.end()  # every job of it was cancelled before it went out
            return
        target, model_id = call.key
        self.calls += 1
        response: DeploymentResponseGenerator[Any] = self._handle_for(model_id).stream_many.remote(
            call.requests, call.call_id, target_replica=target
        )  # type: ignore[assignment]
        self._responses[call.call_id] = response
        try:
            async for message in response:
                call.feed(message)
            call.end()
        except Exception as exc:
            # The call failed as a whole (its replica died): each job retries on its own.
            call.fail(exc)
        finally:
            self._responses.pop(call.call_id, None)

    def _leave(self, member: Member) -> None:
        """The reader of ``member`` stopped: stop its request, wherever it is."""
        member.closed = True
        call = member.call
        if call is None:
            self._grouper.discard(member)
        elif not member.done:
            response = self._responses.get(call.call_id)
            if not call.listening and response is not None:
                response.cancel()  # type: ignore[no-untyped-call]
            else:
                self._background(self._cancel(call, member.index))

    async def _cancel(self, call: GroupCall, index: int) -> None:
        replica = await call.served_by()
        if replica is None:
            return  # the call ended before it started: nothing runs
        try:
            await self.handle.options(_by_reference=False).cancel.remote(
                call.call_id, index, target_replica=replica
            )
        except Exception as exc:  # the row then ends on its own; the job is cancelled anyway
            log.debug("cancel of request %d of call %s failed: %r", index, call.call_id, exc)

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
