"""Adapter affinity for LoRAModel requests: send a job where its adapter is warm.

A request the consumer's scheduler has placed (``target_replica``) goes to that replica,
and waits for it when it is busy (the slot lease admitted it there only), or when this
router has not heard of it yet: a replica's first heartbeat (what the scheduler places
by) is written from its constructor, before Serve's controller tells the routers of it,
and a placed request sent elsewhere meanwhile runs outside the slot lease. The ranking
below is only the fallback: when the target is gone (or still unheard of after
``UNSEEN_TARGET_WAIT_S``), and for the requests nobody placed (the gateway's direct
calls, the window turned off).

Serve's own multiplex routing is soft: once a request's first routing attempt has been
spent (and under load one often is, on another request of the same adapter), its next
attempt goes to "the replicas with the fewest models", so adapters keep moving. This
router always ranks the replicas that hold the adapter first (what each replica
published in its routing stats, read every ``ROUTING_STATS_S``; not Serve's multiplex
LRU, which knew nothing of requests in flight), sends a cold adapter to
one replica chosen the same way by every router (so that concurrent requests for it do
not load it everywhere), and spills to other replicas only when those are full. A replica
found for one request may go to an older request of the same adapter, but only to one
that may run there (:func:`next_for_replica`), never across placements.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol, TypeVar

from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import (
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

from workers.scheduling.rendezvous import rendezvous_score

TARGET_FIELD = "target_replica"
# How long a placed request waits for a target replica this router has never seen: a
# starting replica's first heartbeat to Serve's RUNNING and the routers' update takes
# well under this; a replica that died before it got there gives its requests elsewhere.
UNSEEN_TARGET_WAIT_S = 30.0


def affinity_ranks(adapter: str, replicas: Mapping[str, AbstractSet[str]]) -> list[list[str]]:
    """Replica ids in ranks of preference for a request of ``adapter``.

    ``replicas`` maps each replica id to the adapters it holds. Rank 0: the replicas that
    hold the adapter (the least loaded of them takes it). Then, for a cold adapter, the
    one replica with the fewest adapters, ties broken by rendezvous hashing; last, every
    other replica, tried only when the better ranks are full. No adapter (base model):
    two replicas at random, then all of them.
    """
    ids = list(replicas)
    if not adapter:
        return [random.sample(ids, min(2, len(ids))), ids] if ids else []
    warm = [rid for rid in ids if adapter in replicas[rid]]
    cold = sorted(
        (rid for rid in ids if adapter not in replicas[rid]),
        key=lambda rid: (len(replicas[rid]), -rendezvous_score(adapter, rid)),
    )
    ranks = [warm, cold[:1], cold[1:]]
    return [rank for rank in ranks if rank]


# Calls that mean one replica and no other: a cancel acts on the call that replica serves.
PINNED_METHODS = frozenset({"cancel"})


def targeted(
    ranks: list[list[str]], target: str | None, *, pinned: bool = False
) -> list[list[str]]:
    """``ranks`` with ``target`` alone first, when it is one of the replicas; with
    ``pinned``, only ``target`` (the call waits for it rather than go elsewhere)."""
    if target is None or not any(target in rank for rank in ranks):
        return ranks
    if pinned:
        return [[target]]
    rest = [[rid for rid in rank if rid != target] for rank in ranks]
    return [[target], *[rank for rank in rest if rank]]


class UnseenTargets:
    """The target replicas a router has not seen among its candidates yet (pure policy)."""

    def __init__(self, wait_s: float = UNSEEN_TARGET_WAIT_S) -> None:
        self.wait_s = wait_s
        self.seen: set[str] = set()
        # Target -> when a request first asked for it while unseen (monotonic seconds).
        self.first_asked: dict[str, float] = {}

    def should_wait(self, target: str | None, candidates: Iterable[str], now: float) -> bool:
        """Whether a request placed on ``target`` waits (routed nowhere this round):
        ``target`` was never among this router's candidates, and not for ``wait_s``
        yet. A target seen once and gone since is gone: no wait."""
        self.seen.update(candidates)
        if target is None or target in self.seen:
            if target is not None:
                self.first_asked.pop(target, None)
            return False
        return now - self.first_asked.setdefault(target, now) < self.wait_s


def target_of(args: list[Any], kwargs: Mapping[Any, Any]) -> str | None:
    """The replica a request was placed on: a ``target_replica`` keyword argument, or the
    field of that name of its first argument (a ``GenerationRequest``)."""
    target = kwargs.get(TARGET_FIELD)
    if target is None and args:
        target = getattr(args[0], TARGET_FIELD, None)
    return target if isinstance(target, str) else None


class Waiting(Protocol):
    """What :func:`next_for_replica` reads of a request waiting for a replica."""

    def done(self) -> bool: ...
    def target(self) -> str | None: ...
    def method(self) -> str: ...


W = TypeVar("W", bound=Waiting)


def next_for_replica(own: W | None, same_adapter: Iterable[W], replica: str) -> W | None:
    """Which waiting request a replica found for ``own`` serves (pure policy).

    The oldest request of the same adapter and call that may run on ``replica`` (placed
    there, or placed nowhere) goes first, so that an adapter's requests start in the
    order the consumer sent them; else ``own``. Never a request placed on another replica,
    nor one of another adapter: Serve's FIFOMixin gave the replica to the oldest request
    of any adapter, and a request the slot lease admitted on one replica then ran on
    another, one adapter over its slots.
    """
    if own is None or own.done():
        return None
    for waiting in same_adapter:
        if waiting.done() or waiting.method() != own.method():
            continue
        if waiting.target() in (None, replica):
            return waiting
    return own


class _Pending:
    """A Serve ``PendingRequest`` as :func:`next_for_replica` reads it."""

    def __init__(self, request: PendingRequest) -> None:
        self.request = request

    def done(self) -> bool:
        return self.request.future.done()

    def target(self) -> str | None:
        return target_of(self.request.args, self.request.kwargs)

    def method(self) -> str:
        return self.request.metadata.call_method


def adapters_of(routing_stats: Mapping[str, Any] | None) -> frozenset[str]:
    """The adapters a replica published in its routing stats (``LoRAModel.
    record_routing_stats``: on its device, or held by its requests)."""
    return frozenset((routing_stats or {}).get("adapters", ()))


class AdapterAffinityRouter(MultiplexMixin, RequestRouter):
    """Serve request router for LoRAModel that keeps each adapter on the replicas holding it."""

    def initialize_state(self, **kwargs: Any) -> None:
        """(Serve calls it once, after construction.)"""
        self._unseen = UnseenTargets()

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: RequestMetadata | None = None
    ) -> None:
        """Give ``replica``, found for the request of ``request_metadata``, to the request
        :func:`next_for_replica` picks (Serve calls it from its routing tasks)."""
        if request_metadata is None:
            return
        own = self._pending_for(request_metadata)
        # MultiplexMixin's own look-up of the oldest request of this adapter also drops
        # the served and cancelled ones from the head of its index (lazy clean-up, and
        # the adapter's entry once empty): the index is then read past that head.
        self._get_pending_request_matching_multiplexed_model_id(request_metadata)
        model_id = request_metadata.multiplexed_model_id
        same = self._pending_requests_by_model_id.get(model_id, ()) if model_id else ()
        chosen = next_for_replica(
            _Pending(own) if own is not None else None,
            (_Pending(request) for request in same),
            replica.replica_id.unique_id,
        )
        if chosen is None:
            return
        request = chosen.request
        self._cancel_routing_task_for_pending_request(request)
        self._record_queue_wait_time(request)
        request.future.set_result(replica)
        self._remove_pending_request_from_indices(request)

    def _pending_for(self, request_metadata: RequestMetadata) -> PendingRequest | None:
        """The waiting request whose routing task found the replica: the one that carries
        this very metadata. Several calls of one incoming request (the gateway's, for a
        request of several prompts) share an internal request id, and Serve's index by id
        holds only the first of them: the others are found in the queue."""
        indexed = self._pending_requests_by_id.get(request_metadata.internal_request_id)
        if indexed is not None and indexed.metadata is request_metadata:
            return indexed
        for waiting in self._pending_requests_to_fulfill:
            if waiting.metadata is request_metadata:
                return waiting
        return None

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Candidate replicas in ranks of preference (see :func:`affinity_ranks`)."""
        adapter, target, pinned = "", None, False
        if pending_request is not None:
            adapter = pending_request.metadata.multiplexed_model_id or ""
            target = target_of(pending_request.args, pending_request.kwargs)
            # A placed request waits for its replica rather than go elsewhere: the slot
            # lease admitted it there, and only there (a gone replica is no candidate,
            # and then the ranks below apply).
            pinned = pending_request.metadata.call_method in PINNED_METHODS or target is not None
            # Back off between rounds when every rank was full, rather than spin.
            pending_request.routing_context.should_backoff = True
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        if self._unseen.should_wait(target, by_id, time.monotonic()):
            return []  # Serve asks again after a backoff, with the replicas it knows then
        held = {rid: adapters_of(replica.routing_stats) for rid, replica in by_id.items()}
        ranks = targeted(affinity_ranks(adapter, held), target, pinned=pinned)
        return [[by_id[rid] for rid in rank] for rank in ranks]
