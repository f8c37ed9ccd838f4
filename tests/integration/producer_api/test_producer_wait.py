"""Waiting on jobs through their events streams, with the test writing as the worker."""

from __future__ import annotations

import statistics
import threading
import time
import uuid

import pytest
import redis

from producer import JobTimeoutError, Producer
from schemas import JobStatus, Keys
from tests.integration.producer_api.worker_role import WorkerRole


def test_wait_returns_at_once_for_a_job_that_already_ended(
    producer: Producer, worker: WorkerRole
) -> None:
    job_id = producer.submit("hi")
    worker.start(job_id)
    worker.finish(job_id, text="HI")

    started = time.monotonic()
    record = producer.wait(job_id, timeout=0.05)
    elapsed = time.monotonic() - started

    assert record.status is JobStatus.SUCCEEDED
    assert record.result is not None and record.result.text == "HI"
    # The timeout is 50 ms: returning at all proves it did not block; elapsed is logged.
    print(f"wait on an ended job: {elapsed * 1000:.1f} ms")


def blocked_in_xread(r: redis.Redis, name: str) -> bool:
    return any(c.get("name") == name and c.get("cmd") == "xread" for c in r.client_list())


def test_wait_wakes_within_100ms_of_the_final_event(
    redis_url: str, prefix: str, r: redis.Redis, worker: WorkerRole
) -> None:
    """A protocol latency bound (XREAD BLOCK wakes on XADD), not a speed benchmark: the
    median of 5 trials must be under 100 ms, so one slow trial on a loaded machine is
    tolerated."""
    latencies = []
    for trial in range(5):
        name = f"waiter-{uuid.uuid4().hex[:8]}"
        client = redis.Redis.from_url(redis_url, client_name=name)
        producer = Producer(client, prefix=prefix)
        job_id = producer.submit(f"trial {trial}")
        woke: list[float] = []

        def waiter(p: Producer = producer, jid: str = job_id, out: list[float] = woke) -> None:
            p.wait(jid, timeout=30)
            out.append(time.monotonic())

        thread = threading.Thread(target=waiter)
        thread.start()
        deadline = time.monotonic() + 10
        while not blocked_in_xread(r, name):  # the waiter is inside XREAD BLOCK
            assert time.monotonic() < deadline, "waiter never blocked"
            time.sleep(0.005)
        written = worker.finish(job_id)
        thread.join(30)
        client.close()
        latencies.append(woke[0] - written)

    print("wake latencies (ms):", [round(x * 1000, 1) for x in latencies])
    assert statistics.median(latencies) < 0.1


def test_wait_times_out_naming_the_job(producer: Producer) -> None:
    job_id = producer.submit("never done")
    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match=job_id) as caught:
        producer.wait(job_id, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 5
    assert caught.value.pending == [job_id]


def test_wait_follows_past_running_and_chunk_events(producer: Producer, worker: WorkerRole) -> None:
    job_id = producer.submit("hi")
    worker.start(job_id)
    worker.chunk(job_id, "H")
    timer = threading.Timer(0.2, worker.finish, args=(job_id,), kwargs={"text": "HI"})
    timer.start()
    record = producer.wait(job_id, timeout=10)
    timer.join()
    assert record.status is JobStatus.SUCCEEDED
    assert record.started_at is not None and record.finished_at is not None


def test_events_yields_every_event_up_to_the_final_one(
    producer: Producer, worker: WorkerRole
) -> None:
    job_id = producer.submit("hi")
    worker.start(job_id)

    def rest() -> None:
        worker.chunk(job_id, "HE")
        worker.chunk(job_id, "LLO")
        worker.finish(job_id, text="HELLO")

    timer = threading.Timer(0.1, rest)
    timer.start()
    events = list(producer.events(job_id, timeout=10))
    timer.join()
    assert [(e.event, e.status, e.text) for e in events] == [
        ("status", JobStatus.RUNNING, None),
        ("chunk", None, "HE"),
        ("chunk", None, "LLO"),
        ("status", JobStatus.SUCCEEDED, None),
    ]
    # Replayable: a second reader sees the same stream from the start.
    assert list(producer.events(job_id, timeout=1)) == events


def test_wait_many_collects_every_end(producer: Producer, worker: WorkerRole) -> None:
    ids = [producer.submit(f"p{i}") for i in range(20)]
    worker.finish(ids[0], JobStatus.FAILED)  # ended before the wait

    def finish_rest() -> None:
        for job_id in ids[1:]:
            worker.finish(job_id)

    timer = threading.Timer(0.1, finish_rest)
    timer.start()
    records = producer.wait_many(ids, timeout=20)
    timer.join()
    assert list(records) != [] and set(records) == set(ids)
    assert records[ids[0]].status is JobStatus.FAILED
    assert records[ids[0]].error is not None and records[ids[0]].error.message == "boom"
    assert {records[i].status for i in ids[1:]} == {JobStatus.SUCCEEDED}


def test_wait_many_timeout_keeps_the_ended_ones(producer: Producer, worker: WorkerRole) -> None:
    done, stuck = producer.submit("a"), producer.submit("b")
    worker.finish(done)
    with pytest.raises(JobTimeoutError) as caught:
        producer.wait_many([done, stuck], timeout=0.3)
    assert caught.value.pending == [stuck]
    assert set(caught.value.done) == {done}


def test_as_completed_yields_in_order_of_ending(producer: Producer, worker: WorkerRole) -> None:
    first, second = producer.submit("a"), producer.submit("b")
    worker.finish(second)
    stream = producer.as_completed([first, second], timeout=10)
    assert next(stream).id == second
    worker.finish(first)
    assert next(stream).id == first
    assert list(stream) == []


def test_record_expired_before_the_read_still_reports_the_end(
    producer: Producer, worker: WorkerRole, r: redis.Redis, keys: Keys
) -> None:
    job_id = producer.submit("x")
    worker.finish(job_id, JobStatus.EXPIRED)
    r.delete(keys.job(job_id))
    record = producer.wait(job_id, timeout=1)
    assert record.status is JobStatus.EXPIRED


def test_cancel_flags_a_live_job_and_not_an_ended_one(
    producer: Producer, worker: WorkerRole, r: redis.Redis, keys: Keys
) -> None:
    live = producer.submit("x")
    assert producer.cancel(live) is True
    assert r.get(keys.cancel(live)) == b"1"
    # The flag expires with the record: it never outlives its job.
    assert 0 < r.pttl(keys.cancel(live)) <= r.pttl(keys.job(live)) + 1000

    worker.start(live)
    assert producer.cancel(live) is True  # running jobs stop at their next step

    ended = producer.submit("y")
    worker.finish(ended)
    assert producer.cancel(ended) is False
    assert not r.exists(keys.cancel(ended))

    # No record (an unknown id, or a plain client's job no worker has taken yet): nothing
    # is flagged, so no job submitted later under that id is cancelled before it runs.
    assert producer.cancel("raw-entry") is False
    assert not r.exists(keys.cancel("raw-entry"))


def test_cancel_many_answers_each_job_in_one_call(
    producer: Producer, worker: WorkerRole, r: redis.Redis, keys: Keys
) -> None:
    live, running, ended = producer.submit("x"), producer.submit("y"), producer.submit("z")
    worker.start(running)
    worker.finish(ended)
    took = producer.cancel_many([live, running, ended, "raw-entry"])
    assert took == [True, True, False, False]
    flagged = [bool(r.exists(keys.cancel(i))) for i in (live, running, ended, "raw-entry")]
    assert flagged == [True, True, False, False]
    assert producer.cancel_many([]) == []


def test_get_reads_the_record_or_none(producer: Producer, worker: WorkerRole) -> None:
    assert producer.get("nope") is None
    job_id = producer.submit("x", adapter="sql", metadata={"k": [1, 2]})
    record = producer.get(job_id)
    assert record is not None
    assert (record.status, record.adapter, record.attempts) == (JobStatus.QUEUED, "sql", 0)
    assert record.metadata == {"k": [1, 2]}
