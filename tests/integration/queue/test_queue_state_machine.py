"""The Lua side against the schemas' state machine: every status the scripts may write,
from every status a record may have, against ``schemas.records.TRANSITIONS``.

``statuses.lua`` is generated from that table (a unit test finds it stale); this test
fails when a script decides on its own, whatever the generated file says.
"""

from __future__ import annotations

import uuid

import pytest

from producer.scripts import CANCEL, cancel_args
from schemas import JobStatus, can_transition, codec
from workers.queue.store import FinalWrite, JobStore, MarkOutcome

ENTRY = "1-0"
CURRENT = [None, *JobStatus]


async def job_in(store: JobStore, status: JobStatus | None) -> str:
    """A fresh job id whose record has ``status`` (``None``: no record)."""
    job_id = uuid.uuid4().hex
    if status is not None:
        fields = {"status": status.value, "entry": ENTRY, "attempts": "1", "adapter": ""}
        await store.client.hset(store.keys.job(job_id), mapping=fields)
    return job_id


async def write(store: JobStore, job_id: str, new: JobStatus) -> bool:
    """Ask the script that writes ``new`` for it; whether the record took it."""
    if new.is_final:
        final = FinalWrite(
            entry_id=ENTRY,
            job_id=job_id,
            status=new,
            adapter=None,
            created_at=1.5,
            ttl_s=120,
            fields={},
        )
        return await store.finish(final)
    mark = await store.mark(
        job_id,
        new,
        entry_id=ENTRY,
        adapter=None,
        consumer="c-0",
        created_at=1.5,
        ttl_s=120,
        max_attempts=10,
    )
    return mark.outcome is MarkOutcome.OK


@pytest.mark.parametrize("current", CURRENT, ids=lambda s: "none" if s is None else s.value)
async def test_mark_and_finish_follow_the_schemas(
    store: JobStore, current: JobStatus | None
) -> None:
    for new in JobStatus:
        job_id = await job_in(store, current)
        written = await write(store, job_id, new)
        status = await store.client.hget(store.keys.job(job_id), "status")
        expected = can_transition(current, new)
        assert written is expected, (current, new)
        kept = new if expected else current  # a refused write leaves the record as it was
        assert status == (kept and kept.value.encode()), (current, new, status)


@pytest.mark.parametrize("current", list(JobStatus), ids=lambda s: s.value)
async def test_cancel_follows_the_schemas(store: JobStore, current: JobStatus) -> None:
    job_id = await job_in(store, current)
    cancel_key = store.keys.cancel(job_id)
    reply = await store.client.eval(CANCEL, 2, store.keys.job(job_id), cancel_key, *cancel_args())
    assert [codec.as_text(before) for before in reply] == [current.value]
    flagged = bool(await store.client.exists(cancel_key))
    assert flagged is can_transition(current, JobStatus.CANCELLED)
