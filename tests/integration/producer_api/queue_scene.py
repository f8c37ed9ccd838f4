"""A queue in a known state, made by the real parts: the producer submits, the workers'
store scripts start and finish jobs, a replica's heartbeat writer reports."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from producer import Producer
from schemas import JobError, JobResult, JobStatus, Keys, codec
from schemas.records import ErrorType
from schemas.replicas import BackendStats, DiskTierCounters, ReplicaHeartbeat
from workers.queue.store import FinalWrite, JobStore
from workers.serve.heartbeat import HeartbeatWriter, heartbeat_of

CONSUMER = "scene-consumer-0"
REPLICA = "scene-replica-a"
NODE = "0123456789abcdef" * 3
ADAPTERS = ["upper", "sql"]
SUBMITTED = 6
DELIVERED = 4  # two stay undelivered: lag 2


@dataclass(frozen=True)
class Scene:
    """What :func:`build_scene` made: 6 jobs, 4 delivered, 2 succeeded, 1 failed, 1 running."""

    keys: Keys
    job_ids: list[str]
    heartbeat: ReplicaHeartbeat


def replica_status(tokens: int, now: float) -> ReplicaHeartbeat:
    """The scene replica's heartbeat with ``tokens`` generated so far."""
    return heartbeat_of(
        replica=REPLICA,
        node=NODE,
        adapters=ADAPTERS,
        stats=BackendStats(rows_in_flight=1, cache_hits=7, cache_loads=2, tokens_generated=tokens),
        disk=DiskTierCounters(),
        interval_s=5.0,
        now=now,
    )


def final_write(entry_id: str, payload: str, status: JobStatus) -> FinalWrite:
    """The final write a worker makes for a job that succeeded or failed."""
    fields = {"worker": CONSUMER}
    error = JobError(type=ErrorType.INTERNAL, message="boom")
    if status is JobStatus.SUCCEEDED:
        result = JobResult(text="OK", finish_reason="stop", prompt_tokens=2, completion_tokens=1)
        fields["result"] = codec.dumps(result)
    else:
        fields["error"] = codec.dumps(error)
    return FinalWrite(
        entry_id=entry_id,
        job_id=codec.loads(payload)["id"],
        status=status,
        adapter="upper",
        created_at=time.time(),
        ttl_s=600,
        fields=fields,
        dead_payload=None if status is JobStatus.SUCCEEDED else payload,
        dead_error="" if status is JobStatus.SUCCEEDED else codec.dumps(error),
    )


async def build_scene(producer: Producer, client: aioredis.Redis) -> Scene:
    """Populate ``producer``'s prefix as a worker and a replica would."""
    keys = producer.keys
    job_ids = producer.submit_many(
        [{"prompt": f"p{i}", "adapter": ADAPTERS[i % 2]} for i in range(SUBMITTED)]
    )
    store = JobStore(client, keys, events_maxlen=1000)
    await store.ensure_group()
    entries = await store.read(CONSUMER, count=DELIVERED, block_ms=10)
    assert len(entries) == DELIVERED
    for entry in entries:
        job_id = codec.loads(entry.fields["job"])["id"]
        await store.mark(
            job_id,
            JobStatus.RUNNING,
            entry_id=entry.entry_id,
            adapter="upper",
            consumer=CONSUMER,
            created_at=time.time(),
            ttl_s=600,
            max_attempts=3,
        )
    ends = [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED]
    for entry, status in zip(entries, ends, strict=False):
        assert await store.finish(final_write(entry.entry_id, entry.fields["job"], status))
    beat = replica_status(tokens=40, now=time.time())
    await HeartbeatWriter(client, keys, lambda: beat, beat.interval_s).beat()
    return Scene(keys, job_ids, beat)
