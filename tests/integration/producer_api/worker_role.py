"""The test in the role of a worker: it writes what a worker writes for a job."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from schemas import JobError, JobResult, JobStatus, Keys, codec
from schemas.records import ErrorType


class WorkerRole:
    """Writes what a worker writes for a job: status events, text chunks, the final record.

    The real workers do this in their own Lua script; here the test plays that part with
    plain commands, so that the producer is checked against the protocol alone.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def start(self, job_id: str, attempt: int = 1) -> None:
        """Mark the job running (hash and event), as its ``attempt``-th start."""
        now = time.time()
        self.client.hset(
            self.keys.job(job_id),
            mapping={"status": "running", "started_at": now, "attempts": attempt},
        )
        self._event(job_id, event="status", status="running", attempt=attempt, ts=now)

    def chunk(self, job_id: str, text: str) -> None:
        """Stream a piece of text."""
        self._event(job_id, event="chunk", text=text, ts=time.time())

    def finish(
        self,
        job_id: str,
        status: JobStatus = JobStatus.SUCCEEDED,
        *,
        text: str = "done",
        chunks: Sequence[str] = (),
    ) -> float:
        """Write the final record and final event at once; returns when (monotonic) it began."""
        now = time.time()
        fields: dict[str, str | float] = {"status": status.value, "finished_at": now}
        if status is JobStatus.SUCCEEDED:
            result = JobResult(
                text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=len(chunks)
            )
            fields["result"] = codec.dumps(result)
        else:
            fields["error"] = codec.dumps(JobError(type=ErrorType.INTERNAL, message="boom"))
        pipe = self.client.pipeline(transaction=True)
        for piece in chunks:
            pipe.xadd(self.keys.job_events(job_id), {"event": "chunk", "text": piece, "ts": now})
        pipe.hset(self.keys.job(job_id), mapping=fields)
        pipe.xadd(
            self.keys.job_events(job_id), {"event": "status", "status": status.value, "ts": now}
        )
        sent = time.monotonic()
        pipe.execute()
        return sent

    def _event(self, job_id: str, **fields: str | float) -> None:
        self.client.xadd(self.keys.job_events(job_id), fields)  # type: ignore[arg-type]
