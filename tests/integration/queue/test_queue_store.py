"""The queue scripts against the real Redis server: start, final write once, leases, reclaim."""

from __future__ import annotations

import asyncio

import orjson
import redis

from schemas import JobEvent, JobStatus, codec
from workers.queue.store import MAX_RENEW_BATCH, FinalWrite, JobStore, MarkOutcome


async def push(store: JobStore, payload: dict[str, object]) -> str:
    entry_id = await store.client.xadd(store.keys.jobs, {"job": orjson.dumps(payload)})
    return codec.as_text(entry_id)


async def mark_running(
    store: JobStore, job_id: str, max_attempts: int = 3, entry_id: str = "1-0"
) -> MarkOutcome:
    mark = await store.mark(
        job_id,
        JobStatus.RUNNING,
        entry_id=entry_id,
        adapter="upper",
        consumer="c-0",
        created_at=1.5,
        ttl_s=600,
        max_attempts=max_attempts,
    )
    return mark.outcome


def final(
    entry_id: str, job_id: str, status: JobStatus, result: str, **extra: object
) -> FinalWrite:
    return FinalWrite(
        entry_id=entry_id,
        job_id=job_id,
        status=status,
        adapter="upper",
        created_at=1.5,
        ttl_s=120,
        fields={"result": codec.dumps({"text": result}), "worker": "c-0"},
        **extra,  # type: ignore[arg-type]
    )


def events(r: redis.Redis, key: str) -> list[dict[str, str]]:
    return [codec.decode_fields(fields) for _, fields in r.xrange(key)]


async def test_the_group_starts_at_the_stream_start_and_creation_is_idempotent(
    store: JobStore, r: redis.Redis
) -> None:
    r.delete(store.keys.jobs)  # a stream with entries older than the group
    entry_id = await push(store, {"prompt": "early"})
    assert await store.ensure_group()
    assert not await store.ensure_group()
    entries = await store.read("c-0", count=10, block_ms=10)
    assert [e.entry_id for e in entries] == [entry_id]
    assert orjson.loads(entries[0].fields["job"]) == {"prompt": "early"}


async def test_running_creates_the_record_of_a_raw_job_and_counts_attempts(
    store: JobStore, r: redis.Redis
) -> None:
    assert await mark_running(store, "j1") is MarkOutcome.OK
    record = codec.decode_fields(r.hgetall(store.keys.job("j1")))
    assert record["status"] == "running"
    assert (record["attempts"], record["adapter"], record["worker"]) == ("1", "upper", "c-0")
    assert record["created_at"] == "1.5"
    assert 0 < r.ttl(store.keys.job("j1")) <= 600
    assert [e["status"] for e in events(r, store.keys.job_events("j1"))] == ["running"]
    assert events(r, store.keys.events)[-1]["id"] == "j1"
    assert await mark_running(store, "j1") is MarkOutcome.OK
    assert r.hget(store.keys.job("j1"), "attempts") == b"2"
    # Each start says which it is: a reader knows the text starts again.
    starts = events(r, store.keys.job_events("j1"))
    assert [(e["status"], e["attempt"]) for e in starts] == [("running", "1"), ("running", "2")]
    assert [JobEvent.from_fields(e).attempt for e in starts] == [1, 2]
    assert "attempt" not in events(r, store.keys.events)[-1]


async def test_running_is_refused_when_cancelled_exhausted_or_final(
    store: JobStore, r: redis.Redis
) -> None:
    r.set(store.keys.cancel("c"), 1)
    assert await mark_running(store, "c") is MarkOutcome.CANCEL
    assert not r.exists(store.keys.job("c"))
    for _ in range(2):
        assert await mark_running(store, "x", max_attempts=2) is MarkOutcome.OK
    assert await mark_running(store, "x", max_attempts=2) is MarkOutcome.EXHAUSTED
    r.hset(store.keys.job("done"), "status", "succeeded")
    assert await mark_running(store, "done") is MarkOutcome.FINAL


async def test_the_final_write_happens_once_and_acknowledges_both_writers(
    store: JobStore, r: redis.Redis
) -> None:
    entry_id = await push(store, {"id": "j2", "prompt": "hi"})
    await store.read("c-0", count=1, block_ms=10)
    await mark_running(store, "j2", entry_id=entry_id)
    assert await store.finish(final(entry_id, "j2", JobStatus.SUCCEEDED, "FIRST"))
    # The same entry delivered again (reclaimed from a slow consumer that then resumed).
    await store.read("c-1", count=1, block_ms=10)
    assert not await store.finish(final(entry_id, "j2", JobStatus.FAILED, "SECOND"))
    record = codec.decode_fields(r.hgetall(store.keys.job("j2")))
    assert record["status"] == "succeeded"
    assert orjson.loads(record["result"]) == {"text": "FIRST"}
    assert r.xpending(store.keys.jobs, store.keys.group)["pending"] == 0
    statuses = [e["status"] for e in events(r, store.keys.job_events("j2"))]
    assert statuses == ["running", "succeeded"]
    assert 0 < r.ttl(store.keys.job("j2")) <= 120
    assert 0 < r.ttl(store.keys.job_events("j2")) <= 120
    assert r.xlen(store.keys.dead) == 0


async def test_another_entry_with_a_taken_id_is_dead_lettered_and_changes_nothing(
    store: JobStore, r: redis.Redis
) -> None:
    first = await push(store, {"id": "j4", "prompt": "hi"})
    second = await push(store, {"id": "j4", "prompt": "ho"})
    await store.read("c-0", count=2, block_ms=10)
    assert await mark_running(store, "j4", entry_id=first) is MarkOutcome.OK
    mark = await store.mark(
        "j4",
        JobStatus.RUNNING,
        entry_id=second,
        adapter=None,
        consumer="c-0",
        created_at=1.5,
        ttl_s=600,
        max_attempts=3,
    )
    assert mark.outcome is MarkOutcome.REFUSED
    assert mark.value == f"job id j4 is already used by stream entry {first}"
    # Neither before nor after the owner's answer may the other entry write one.
    for status in (JobStatus.FAILED, JobStatus.SUCCEEDED):
        assert not await store.finish(final(second, "j4", status, "OTHER"))
    assert await store.finish(final(first, "j4", JobStatus.SUCCEEDED, "MINE"))
    assert not await store.finish(final(second, "j4", JobStatus.FAILED, "OTHER"))
    record = codec.decode_fields(r.hgetall(store.keys.job("j4")))
    assert (record["status"], orjson.loads(record["result"])) == ("succeeded", {"text": "MINE"})
    dead = [codec.decode_fields(f) for _, f in r.xrange(store.keys.dead)]
    assert [(d["id"], d["entry"]) for d in dead] == [(second, second)] * 3
    assert "already used by stream entry" in orjson.loads(dead[0]["error"])["message"]
    assert r.xpending(store.keys.jobs, store.keys.group)["pending"] == 0


async def test_an_id_that_lands_on_another_key_is_refused_without_partial_writes(
    store: JobStore, r: redis.Redis
) -> None:
    owner = await push(store, {"id": "j5", "prompt": "hi"})
    clash = await push(store, {"id": "j5:events", "prompt": "hi"})
    await store.read("c-0", count=2, block_ms=10)
    await mark_running(store, "j5", entry_id=owner)  # creates the j5:events stream
    before = {key: r.type(key) for key in r.scan_iter(match=f"{store.keys.prefix}:*")}
    assert await mark_running(store, "j5:events", entry_id=clash) is MarkOutcome.REFUSED
    assert not await store.finish(final(clash, "j5:events", JobStatus.FAILED, ""))
    after = {key: r.type(key) for key in r.scan_iter(match=f"{store.keys.prefix}:*")}
    assert after == {**before, store.keys.dead.encode(): b"stream"}
    [(_, fields)] = r.xrange(store.keys.dead)
    dead = codec.decode_fields(fields)
    assert dead["id"] == clash
    assert "clashes with another key" in orjson.loads(dead["error"])["message"]


async def test_a_failed_job_is_copied_to_the_dead_letters(store: JobStore, r: redis.Redis) -> None:
    entry_id = await push(store, {"prompt": "hi"})
    await store.read("c-0", count=1, block_ms=10)
    write = final(entry_id, entry_id, JobStatus.FAILED, "", dead_payload="raw", dead_error="{}")
    assert await store.finish(write)
    [(_, fields)] = r.xrange(store.keys.dead)
    dead = codec.decode_fields(fields)
    assert (dead["id"], dead["entry"], dead["payload"]) == (entry_id, entry_id, "raw")
    assert dead["attempts"] == "0"
    assert r.hget(store.keys.job(entry_id), "created_at") == b"1.5"


async def test_chunks_go_to_the_job_events_from_the_running_attempt_only(
    store: JobStore, r: redis.Redis
) -> None:
    await mark_running(store, "j3")
    assert await store.append_chunk("j3", "HEL", attempt=1, offset=0)
    # The job is taken over (a stalled consumer's entry reclaimed): attempt 1 is stale.
    await mark_running(store, "j3")
    assert not await store.append_chunk("j3", "LO", attempt=1, offset=3)
    assert await store.append_chunk("j3", "hel", attempt=2, offset=0)
    assert await store.finish(final("1-0", "j3", JobStatus.SUCCEEDED, "hel"))
    assert not await store.append_chunk("j3", "lo", attempt=2, offset=3)
    kinds = [e.get("text") or e["status"] for e in events(r, store.keys.job_events("j3"))]
    assert kinds == ["running", "HEL", "running", "hel", "succeeded"]
    assert not await store.append_chunk("never-started", "x", attempt=1, offset=0)
    assert not r.exists(store.keys.job_events("never-started"))


async def test_a_chunk_sent_again_after_a_lost_reply_is_streamed_once(
    store: JobStore, r: redis.Redis
) -> None:
    await mark_running(store, "j5")
    assert await store.append_chunk("j5", "né", attempt=1, offset=0)
    # Its reply was lost: the consumer sends it again with the text made since.
    assert await store.append_chunk("j5", "né ça", attempt=1, offset=0)
    assert await store.append_chunk("j5", " va", attempt=1, offset=len("né ça".encode()))
    texts = [e["text"] for e in events(r, store.keys.job_events("j5")) if e["event"] == "chunk"]
    assert texts == ["né", " ça", " va"]


async def test_the_final_write_completes_the_stream_an_outage_left_short(
    store: JobStore, r: redis.Redis
) -> None:
    await mark_running(store, "j6")
    assert await store.append_chunk("j6", "HEL", attempt=1, offset=0)
    done = final("1-0", "j6", JobStatus.SUCCEEDED, "HELLO", text="HELLO", attempt=1)
    assert await store.finish(done)
    # A second writer adds nothing: the job had ended.
    assert not await store.finish(done)
    kinds = [e.get("text") or e["status"] for e in events(r, store.keys.job_events("j6"))]
    assert kinds == ["running", "HEL", "LO", "succeeded"]
    # An earlier attempt's answer lands after a later start streamed text: it stands, and
    # the stream restarts with it, so the chunks after the latest start are the result.
    await mark_running(store, "j7")
    await mark_running(store, "j7")
    assert await store.append_chunk("j7", "A", attempt=2, offset=0)
    assert await store.finish(final("1-0", "j7", JobStatus.SUCCEEDED, "AB", text="AB", attempt=1))
    found = events(r, store.keys.job_events("j7"))
    kinds = [e.get("text") or f"{e['status']}{e.get('attempt', '')}" for e in found]
    assert kinds == ["running1", "running2", "A", "running1", "AB", "succeeded"]


async def test_renewal_keeps_own_entries_and_reports_lost_ones(
    store: JobStore, r: redis.Redis
) -> None:
    mine = await push(store, {"prompt": "a"})
    theirs = await push(store, {"prompt": "b"})
    await store.read("me", count=2, block_ms=10)
    await asyncio.sleep(0.05)
    r.xclaim(store.keys.jobs, store.keys.group, "other", 0, [theirs], justid=True)
    assert await store.renew("me", [mine, theirs]) == [theirs]
    pending = {
        codec.as_text(p["message_id"]): p
        for p in r.xpending_range(store.keys.jobs, store.keys.group, "-", "+", 10)
    }
    assert codec.as_text(pending[theirs]["consumer"]) == "other"
    assert pending[mine]["time_since_delivered"] < 50
    assert pending[mine]["times_delivered"] == 1  # renewal is not a delivery


async def test_renewal_of_more_entries_than_one_call_takes_covers_them_all(
    store: JobStore, r: redis.Redis
) -> None:
    count = MAX_RENEW_BATCH * 2 + 5  # three script calls
    ids = [await push(store, {"prompt": str(i)}) for i in range(count)]
    await store.read("me", count=count, block_ms=10)
    await asyncio.sleep(0.3)  # idle 300 ms: a renewed entry's idle time restarts
    # One lost entry in each call's part: the first, one in the middle, the last.
    taken = [ids[0], ids[MAX_RENEW_BATCH + 1], ids[-1]]
    r.xclaim(store.keys.jobs, store.keys.group, "other", 0, taken, justid=True)
    assert await store.renew("me", ids) == taken
    pending = r.xpending_range(store.keys.jobs, store.keys.group, "-", "+", count, "me")
    assert len(pending) == count - len(taken)
    assert max(p["time_since_delivered"] for p in pending) < 300
    assert await store.renew("me", []) == []


async def test_reclaim_takes_idle_entries_and_reports_deleted_ones(
    store: JobStore, r: redis.Redis
) -> None:
    stale = await push(store, {"prompt": "a"})
    gone = await push(store, {"prompt": "b"})
    await store.read("dead-consumer", count=2, block_ms=10)
    r.xdel(store.keys.jobs, gone)
    await asyncio.sleep(0.05)
    cursor, entries, deleted = await store.reclaim("me", min_idle_ms=20, count=10)
    assert cursor == "0-0"
    assert [e.entry_id for e in entries] == [stale]
    assert deleted == [gone]
    resumed = await store.read_pending("me", count=10)
    assert [e.entry_id for e in resumed] == [stale]


async def test_cancel_requests_are_found(store: JobStore, r: redis.Redis) -> None:
    r.set(store.keys.cancel("b"), 1)
    assert await store.cancel_requested(["a", "b"]) == {"b"}
    assert await store.cancel_requested([]) == set()


async def test_the_server_config_shows_persistence_and_eviction(store: JobStore) -> None:
    config = await store.server_config()
    assert config["appendonly"] in ("yes", "no")
    assert "maxmemory-policy" in config
