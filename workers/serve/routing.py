"""Adapter affinity for LoRAModel requests: send a job where its adapter is warm.

Serve's own multiplex routing is soft: once a request's first routing attempt has been
spent (and under load one often is, on another request of the same adapter), its next
attempt goes to "the replicas with the fewest models", so adapters keep moving. This
router always ranks the replicas that hold the adapter first, sends a cold adapter to
one replica chosen the same way by every router (so that concurrent requests for it do
not load it everywhere), and spills to other replicas only when those are full.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from ray.serve.request_router import (
    FIFOMixin,
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)


def rendezvous_score(adapter: str, replica_id: str) -> int:
    """A score that is the same in every process (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(f"{adapter}\0{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


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


class AdapterAffinityRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """Serve request router for LoRAModel that keeps each adapter on the replicas holding it."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Candidate replicas in ranks of preference (see :func:`affinity_ranks`)."""
        adapter = ""
        if pending_request is not None:
            adapter = pending_request.metadata.multiplexed_model_id or ""
            # Back off between rounds when every rank was full, rather than spin.
            pending_request.routing_context.should_backoff = True
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        held = {rid: replica.multiplexed_model_ids for rid, replica in by_id.items()}
        return [[by_id[rid] for rid in rank] for rank in affinity_ranks(adapter, held)]
