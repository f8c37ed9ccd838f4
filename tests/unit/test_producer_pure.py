"""The producer's pure logic: ids, validation, script arguments, reply parsing, waiting state."""

from __future__ import annotations

import re
import sys

import orjson
import pytest
import redis.exceptions

from producer.errors import (
    JobTimeoutError,
    JobTooLargeError,
    JobValidationError,
    endpoint_of,
    mask_url,
)
from producer.following import EventFollower, block_slice_s, final_record, parse_record
from producer.progress import progress_bar
from producer.scripts import cancel_args, cancel_took_effect
from producer.stats import parse_stats
from producer.submission import (
    build_job,
    chunked,
    enqueue_call,
    new_job_id,
    prepare_job,
    prepare_jobs,
    sort_replies,
)
from schemas import Job, JobEvent, JobStatus, Keys
from schemas.jobs import JOB_ID_PATTERN, MAX_JOB_BYTES, is_entry_id
from schemas.replicas import ConsumerHeartbeat
from tests.terminal import Terminal

KEYS = Keys("p")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_new_ids_match_the_protocol_and_sort_by_time() -> None:
    ids = [new_job_id() for _ in range(200)]
    assert all(re.fullmatch(JOB_ID_PATTERN, i) and not is_entry_id(i) for i in ids)
    assert len(set(ids)) == 200
    assert [i.split("-")[0] for i in ids] == sorted(i.split("-")[0] for i in ids)


def test_build_job_assigns_an_id_and_keeps_a_given_one() -> None:
    assert build_job("x").id is not None
    assert build_job("x", id="mine").id == "mine"


def test_validation_error_lists_field_and_problem() -> None:
    with pytest.raises(JobValidationError) as caught:
        build_job("x", id="bad id", params={"max_new_tokens": 10**6, "top_k": -1})
    message = str(caught.value)
    assert "id: String should match pattern" in message
    assert "params.max_new_tokens: Input should be less than or equal to 8192" in message
    assert "params.top_k: Input should be greater than or equal to 0" in message


def test_prepare_jobs_names_the_first_bad_job_by_index() -> None:
    with pytest.raises(JobValidationError, match=r"^jobs\[1\]: job: .*exactly one"):
        prepare_jobs([{"prompt": "a"}, {}, {"prompt": "b", "id": " "}])


def test_prepare_job_revalidates_a_model() -> None:
    with pytest.raises(JobValidationError, match="prompt"):
        prepare_job(Job.model_construct(prompt=""))


def test_enqueue_call_spells_keys_and_arguments() -> None:
    job = build_job("hi", id="j1", adapter="sql", metadata={"a": 1}, params={"seed": 3})
    call = enqueue_call(KEYS, job, job_ttl_s=600, owner="digest", now=1795873779.5)
    assert call.keys == ["p:jobs", "p:job:j1"]
    payload, ttl, adapter, created_at, metadata, owner = call.args
    assert orjson.loads(payload) == {
        "id": "j1",
        "adapter": "sql",
        "prompt": "hi",
        "params": {
            "max_new_tokens": 64,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "seed": 3,
            "stop": [],
        },
        "metadata": {"a": 1},
    }
    assert (ttl, adapter, float(created_at), metadata) == ("600", "sql", 1795873779.5, '{"a":1}')
    assert owner == "digest"


def test_enqueue_call_for_the_base_model_without_metadata() -> None:
    call = enqueue_call(KEYS, build_job("hi", id="j", adapter=""), job_ttl_s=60)
    assert call.args[2:] == ["", call.args[3], "", ""]


def test_a_job_over_the_protocols_bound_is_refused_before_anything_is_written() -> None:
    # Each message is within the schema's bounds; together they pass MAX_JOB_BYTES.
    content = "x" * 100_000
    messages = [{"role": "user", "content": content}] * (MAX_JOB_BYTES // len(content) + 1)
    job = build_job(messages=messages, id="huge")
    with pytest.raises(JobTooLargeError, match=r"^huge: job: \d+ bytes as JSON, over"):
        enqueue_call(KEYS, job, job_ttl_s=60)
    fits = build_job(messages=messages[:-2], id="fits")
    assert enqueue_call(KEYS, fits, job_ttl_s=60).job_id == "fits"


def test_sort_replies_puts_every_id_in_one_place() -> None:
    calls = [enqueue_call(KEYS, build_job("x", id=f"j{i}"), job_ttl_s=60) for i in range(4)]
    replies = [1, 0, redis.exceptions.ResponseError("WRONGTYPE"), 1]
    outcome = sort_replies(calls, replies)
    assert outcome.submitted == ["j0", "j1", "j3"]
    assert outcome.failed == {"j2": "WRONGTYPE"}
    assert not outcome.script_missing
    missing = sort_replies(calls[:1], [redis.exceptions.NoScriptError("NOSCRIPT")])
    assert missing.script_missing and list(missing.failed) == ["j0"]


def test_chunked() -> None:
    assert [list(c) for c in chunked([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError):
        list(chunked([1], 0))


def test_cancel_arguments_and_reply() -> None:
    assert cancel_args() == [""]
    assert cancel_args("abc")[0] == "abc"
    assert cancel_took_effect(b"queued") and cancel_took_effect("running")
    assert not cancel_took_effect(b"") and not cancel_took_effect("succeeded")


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("rediss://:pw@h/0") == "rediss://:***@h/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url("redis://u:pw@[::1]:6379") == "redis://u:***@[::1]:6379"


def test_endpoint_of_connection_kwargs() -> None:
    assert endpoint_of({"host": "h", "port": 7, "db": 2, "password": "x"}) == "redis://h:7/2"
    assert endpoint_of({"path": "/tmp/r.sock"}) == "unix:///tmp/r.sock"


def test_block_slice_stays_below_the_socket_timeout() -> None:
    assert block_slice_s({"socket_timeout": None}) == 5.0
    assert block_slice_s({"socket_timeout": 10}) == 5.0
    assert block_slice_s({"socket_timeout": 1}) == 0.5


def entry(entry_id: str, **fields: str) -> tuple[bytes, dict[bytes, bytes]]:
    return entry_id.encode(), {k.encode(): v.encode() for k, v in fields.items()}


def test_follower_reads_from_zero_and_follows_the_last_id() -> None:
    follower = EventFollower(KEYS, ["a", "b"], timeout_s=None)
    first = follower.next_read()
    assert first is not None
    assert first.streams == {"p:job:a:events": "0-0", "p:job:b:events": "0-0"}
    assert first.block_ms == 5000

    events = follower.feed(
        [
            (
                b"p:job:a:events",
                [
                    entry("1-0", event="status", status="running"),
                    entry("2-0", event="chunk", text="hi"),
                ],
            ),
        ]
    )
    assert [(job, e.event) for job, e in events] == [("a", "status"), ("a", "chunk")]
    read = follower.next_read()
    assert read is not None and read.streams["p:job:a:events"] == "2-0"

    follower.feed({b"p:job:a:events": [entry("3-0", event="status", status="succeeded")]})
    assert follower.pending == ["b"]
    read = follower.next_read()
    assert read is not None and list(read.streams) == ["p:job:b:events"]

    follower.feed([(b"p:job:b:events", [entry("1-0", event="status", status="failed")])])
    assert follower.next_read() is None


def test_follower_skips_malformed_entries() -> None:
    follower = EventFollower(KEYS, ["a"], timeout_s=None)
    events = follower.feed(
        [
            (
                b"p:job:a:events",
                [entry("1-0", event="bogus"), entry("2-0", event="status", status="expired")],
            )
        ]
    )
    assert [e.status for _, e in events] == [JobStatus.EXPIRED]
    assert follower.next_read() is None


def test_follower_times_out_by_its_clock() -> None:
    clock = FakeClock()
    follower = EventFollower(KEYS, ["a"], timeout_s=2.0, slice_s=5.0, clock=clock)
    read = follower.next_read()
    assert read is not None and read.block_ms == 2000
    clock.now += 1.5
    read = follower.next_read()
    assert read is not None and read.block_ms == 500
    clock.now += 0.5
    with pytest.raises(JobTimeoutError, match="job a did not end within 2s") as caught:
        follower.next_read()
    assert caught.value.pending == ["a"]


def test_timeout_message_shortens_long_lists() -> None:
    error = JobTimeoutError([f"j{i}" for i in range(8)], {}, 1.0)
    assert "j0, j1, j2, j3, j4 and 3 more" in str(error)


def test_records_from_hashes() -> None:
    assert parse_record("x", {}) is None
    record = parse_record("x", {b"status": b"queued", b"adapter": b"", b"attempts": b"0"})
    assert record is not None and record.adapter is None and record.status is JobStatus.QUEUED
    final = JobEvent(event="status", status=JobStatus.SUCCEEDED, ts=5.0)
    assert final_record("x", {}, final).status is JobStatus.SUCCEEDED


def test_stats_from_replies_with_nothing_created() -> None:
    stats = parse_stats(
        KEYS,
        [
            0,
            redis.exceptions.ResponseError("no such key"),
            redis.exceptions.ResponseError("NOGROUP No such consumer group"),
            0,
            [],
            {},
            {},
            {},
        ],
    )
    assert (stats.stream_length, stats.group_exists, stats.lag) == (0, False, None)
    assert stats.start_failures is None and stats.to_dict()["start_failures"] is None


def test_stats_from_replies_with_a_group() -> None:
    groups = [
        {"name": b"other", "pending": 9, "lag": 9},
        {"name": b"p:workers", "pending": 2, "lag": None},
    ]
    consumers = [
        {"name": b"c1", "pending": 2, "idle": 1500},
        {"name": b"c2", "pending": 0, "idle": 10},
    ]
    # c2 beats with its window's figures; c1's beat is stale, so its window is unknown.
    beats = {
        b"c1": ConsumerHeartbeat(consumer="c1", window_depth=5, ts=1.0, interval_s=1.0),
        b"c2": ConsumerHeartbeat(
            consumer="c2", window_depth=7, window_oldest_wait_s=1.5, ts=99.0, interval_s=1.0
        ),
    }
    fields = {name: beat.model_dump_json() for name, beat in beats.items()}
    starts = {b"failures": b"2", b"cause": b"ValueError: no", b"replica": b"r1", b"ts": b"98.5"}
    stats = parse_stats(KEYS, [7, groups, consumers, 1, [], {}, fields, starts], now=100.0)
    assert (stats.pending, stats.lag, stats.dead_letters) == (2, None, 1)
    assert stats.to_dict()["start_failures"] == {
        "failures": 2,
        "cause": "ValueError: no",
        "replica": "r1",
        "ts": 98.5,
    }
    assert stats.consumers[0].name == "c1" and stats.consumers[0].idle_ms == 1500
    assert stats.to_dict()["consumers"] == [
        {
            "name": "c1",
            "pending": 2,
            "idle_ms": 1500,
            "window_depth": None,
            "window_oldest_wait_s": None,
        },
        {"name": "c2", "pending": 0, "idle_ms": 10, "window_depth": 7, "window_oldest_wait_s": 1.5},
    ]


def test_stats_raise_other_errors() -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="NOPERM"):
        parse_stats(KEYS, [redis.exceptions.ResponseError("NOPERM"), [], [], 0, [], {}, {}, {}])


def test_progress_is_drawn_on_a_terminal_only_and_counts_without_rich(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rich.progress", None)  # a producer-only install
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar("batch b", 5) as advance:
        advance(2)
        advance(3)
    assert terminal.getvalue() == "\rbatch b 0/5\rbatch b 2/5\rbatch b 5/5\n"
    piped = Terminal()
    monkeypatch.setattr(piped, "isatty", lambda: False)
    monkeypatch.setattr(sys, "stderr", piped)
    with progress_bar("batch b", 5) as advance:
        advance(5)
    assert piped.getvalue() == ""
