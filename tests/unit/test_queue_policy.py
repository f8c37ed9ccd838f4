"""The consumer's pure decisions: reads, payload parsing, expiry, retries, dead letters."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import ErrorType, Job, JobStatus
from schemas.jobs import (
    ADAPTER_NAME_PATTERN,
    MAX_JOB_BYTES,
    MAX_NEW_TOKENS,
    MAX_PRIORITY,
    TENANT_PATTERN,
)
from workers.queue import policy
from workers.serve.chunks import ChunkBuffer

ENTRY = "1795873779512-0"


def entry(payload: object) -> dict[str, str]:
    return {"job": payload if isinstance(payload, str) else orjson.dumps(payload).decode()}


@pytest.mark.parametrize(
    ("free", "cap", "expected"), [(0, 32, 0), (-1, 32, 0), (5, 32, 5), (50, 32, 32)]
)
def test_read_count_never_exceeds_free_slots(free: int, cap: int, expected: int) -> None:
    assert policy.read_count(free, cap) == expected


def test_created_at_is_the_entry_ids_milliseconds() -> None:
    assert policy.created_at_of(ENTRY) == pytest.approx(1795873779.512)
    assert policy.created_at_of("garbage") == 0.0


def test_a_valid_job_without_id_takes_the_entry_id() -> None:
    job = policy.parse_entry(ENTRY, entry({"adapter": "upper", "prompt": "hi"}))
    assert isinstance(job, Job)
    assert (job.id, job.adapter_name, job.prompt) == (ENTRY, "upper", "hi")


def test_a_valid_job_keeps_its_own_id() -> None:
    job = policy.parse_entry(ENTRY, entry({"id": "mine-1", "prompt": "hi"}))
    assert isinstance(job, Job) and job.id == "mine-1"


@pytest.mark.parametrize(
    ("payload", "job_id", "words"),
    [
        ("not json {", ENTRY, "not valid JSON"),
        ("[1, 2]", ENTRY, "expected a JSON object"),
        ({"id": "x-1", "adapter": "upper"}, "x-1", "exactly one of 'prompt' and 'messages'"),
        ({"id": "x-2", "prompt": "hi", "params": {"max_new_tokens": 0}}, "x-2", "max_new_tokens"),
        ({"id": "x-3", "prompt": "hi", "params": {"top_p": 7}}, "x-3", "params.top_p"),
        ({"id": "../etc", "prompt": "hi"}, ENTRY, "id"),
        ({"prompt": "hi", "adapter": "../x"}, ENTRY, "adapter"),
        ({"prompt": "hi", "surprise": 1}, ENTRY, "surprise"),
    ],
)
def test_bad_payloads_are_rejected_with_the_id_to_answer(
    payload: object, job_id: str, words: str
) -> None:
    fields = entry(payload)
    rejected = policy.parse_entry(ENTRY, fields)
    assert isinstance(rejected, policy.Rejected)
    assert rejected.job_id == job_id
    assert words in rejected.message
    assert rejected.payload == fields["job"]


def test_an_entry_without_job_field_is_rejected_under_its_entry_id() -> None:
    rejected = policy.parse_entry(ENTRY, {"prompt": "hi"})
    assert isinstance(rejected, policy.Rejected)
    assert rejected.job_id == ENTRY
    assert "no 'job' field" in rejected.message and "prompt" in rejected.message


@pytest.mark.parametrize(
    ("head", "job_id"),
    [
        ('{"id": "big-1", "prompt": "', "big-1"),
        ('{"prompt": "x", "id": "big-1", "tags": "', ENTRY),  # not first: maybe nested
        ('{"id": "1-1", "prompt": "', ENTRY),  # another producer's entry ID
        ('["', ENTRY),
    ],
)
def test_a_payload_over_the_bound_is_refused_unread(head: str, job_id: str) -> None:
    # Not even JSON (the string never closes): a parser would say so, the bound comes first.
    payload = head + "é" * (MAX_JOB_BYTES // 2)
    fields = {"job": payload}
    rejected = policy.parse_entry(ENTRY, fields)
    assert isinstance(rejected, policy.Rejected)
    assert rejected.job_id == job_id
    size = len(payload.encode())
    assert (
        rejected.message
        == f"job: {size} bytes as JSON, over the protocol's {MAX_JOB_BYTES} (MAX_JOB_BYTES)"
    )
    assert policy.claim_entry(ENTRY, fields) is None


def test_a_payload_at_the_bound_is_parsed() -> None:
    fields = entry({"id": "edge", "prompt": "hi", "metadata": {}})
    padded = fields["job"][:-1] + " " * (MAX_JOB_BYTES - len(fields["job"])) + "}"
    job = policy.parse_entry(ENTRY, {"job": padded})
    assert isinstance(job, Job) and job.id == "edge"
    assert policy.claim_entry(ENTRY, {"job": padded}) is not None


# Values of each type a producer might send, some the schema coerces ("3", 2.0, true).
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 2.0, 2.5, 1e12]),
    st.sampled_from(["", "a", "t-1", "job-7", "3", "1e12", "1-1", "a b", "../x", "a\n", "x" * 129]),
    st.sampled_from([0, 10**4, -(10**4), 8193]),
)
CLAIMED_KEYS = ["id", "adapter", "priority", "tenant", "deadline"]


@settings(max_examples=500, deadline=None)
@given(
    job=st.dictionaries(st.sampled_from(CLAIMED_KEYS), ANY_VALUE),
    params=st.one_of(st.none(), st.dictionaries(st.just("max_new_tokens"), ANY_VALUE)),
)
def test_a_claim_reads_every_job_the_schema_takes_as_its_full_parse_does(
    job: dict[str, object], params: dict[str, object] | None
) -> None:
    """The window's quick view and the full parse agree on every job the schema accepts
    (the others are planned however, and rejected when they start)."""
    fields = entry({"prompt": "hi", **job, **({} if params is None else {"params": params})})
    parsed = policy.parse_entry(ENTRY, fields)
    claim = policy.claim_entry(ENTRY, fields)
    if isinstance(parsed, Job):
        assert claim == policy.Claim.of(parsed, ENTRY)
    elif claim is not None:
        # Invalid elsewhere (rejected when it starts): what the plan acts on is still sound.
        assert claim.adapter is None or re.fullmatch(ADAPTER_NAME_PATTERN, claim.adapter)
        assert claim.tenant is None or re.fullmatch(TENANT_PATTERN, claim.tenant)
        assert -MAX_PRIORITY <= claim.priority <= MAX_PRIORITY
        assert 1 <= claim.tokens <= MAX_NEW_TOKENS


def test_an_entry_that_is_no_json_object_is_not_claimed() -> None:
    for payload in ["{", "[1]", "null", '"job"']:
        assert policy.claim_entry(ENTRY, entry(payload)) is None
    assert policy.claim_entry(ENTRY, {"other": "x"}) is None


def test_expiry_looks_at_the_deadline_only() -> None:
    job = Job(prompt="hi", deadline=1000.0)
    assert policy.is_expired(job, 1000.5)
    assert not policy.is_expired(job, 999.0)
    assert not policy.is_expired(Job(prompt="hi"), 1e12)


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [policy.retry_delay_s(n, 0.5, 3.0) for n in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def failure(error_type: ErrorType, attempts: int) -> policy.Retry | policy.GiveUp:
    return policy.after_failure(
        error_type=error_type,
        message="boom",
        attempts=attempts,
        max_attempts=3,
        base_s=0.5,
        cap_s=10.0,
    )


@pytest.mark.parametrize("error_type", sorted(policy.JOB_CAUSED))
def test_failures_the_job_caused_are_final_at_once(error_type: ErrorType) -> None:
    assert failure(error_type, 1) == policy.GiveUp(error_type, "boom")


@pytest.mark.parametrize("error_type", [ErrorType.INTERNAL, ErrorType.TIMEOUT])
def test_other_failures_retry_until_attempts_are_exhausted(error_type: ErrorType) -> None:
    assert failure(error_type, 1) == policy.Retry(0.5)
    assert failure(error_type, 2) == policy.Retry(1.0)
    given_up = failure(error_type, 3)
    assert isinstance(given_up, policy.GiveUp)
    assert given_up.type is ErrorType.ATTEMPTS_EXHAUSTED
    assert "3 attempts" in given_up.message and "boom" in given_up.message


@pytest.mark.parametrize("error_type", sorted(policy.SAID_AS_IT_IS))
def test_a_store_or_model_that_stayed_away_ends_the_job_under_its_own_type(
    error_type: ErrorType,
) -> None:
    assert failure(error_type, 2) == policy.Retry(1.0)
    assert failure(error_type, 3) == policy.GiveUp(error_type, "boom (gave up after 3 attempts)")


def test_a_job_no_model_could_run_ends_once_its_deadline_passed() -> None:
    def after(error_type: ErrorType, deadline: float | None) -> policy.Retry | policy.GiveUp:
        return policy.after_failure(
            error_type=error_type,
            message="boom",
            attempts=1,
            max_attempts=3,
            base_s=0.5,
            cap_s=10.0,
            deadline=deadline,
            now=100.0,
        )

    model_gone = ErrorType.MODEL_UNAVAILABLE
    given_up = after(model_gone, 99.0)
    assert isinstance(given_up, policy.GiveUp) and given_up.type is model_gone
    assert "deadline passed" in given_up.message
    assert after(model_gone, 101.0) == policy.Retry(0.5)
    assert after(model_gone, None) == policy.Retry(0.5)
    assert after(ErrorType.INTERNAL, 99.0) == policy.Retry(0.5)  # said as before


def test_redis_without_aof_or_with_eviction_is_warned_about() -> None:
    assert (
        policy.persistence_warnings({"appendonly": "yes", "maxmemory-policy": "noeviction"}) == []
    )
    assert policy.persistence_warnings({}) == []  # CONFIG disabled: nothing known
    [aof] = policy.persistence_warnings({"appendonly": "no", "maxmemory-policy": "noeviction"})
    assert "appendonly yes" in aof
    [evict] = policy.persistence_warnings({"appendonly": "yes", "maxmemory-policy": "allkeys-lru"})
    assert "allkeys-lru" in evict and "noeviction" in evict


def test_only_failed_jobs_are_dead_lettered() -> None:
    assert policy.dead_letters(JobStatus.FAILED)
    for status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.EXPIRED):
        assert not policy.dead_letters(status)


def test_chunks_come_every_few_tokens_after_the_interval_or_when_big() -> None:
    buffer = ChunkBuffer(interval_s=0.05, min_deltas=3, max_chars=8, now=0.0)
    assert buffer.add("a", 0.01) is None
    assert buffer.add("b", 0.10) is None  # the interval passed, but only two tokens
    assert buffer.add("c", 0.11) == "abc"
    assert buffer.add("d", 0.12) is None
    assert buffer.add("e", 0.13) is None
    assert buffer.add("f", 0.14) is None  # three tokens, but too soon after the last chunk
    assert buffer.add("0123456789", 0.15) == "def0123456789"  # big enough at once
    assert buffer.add("", 0.5) is None  # nothing held, nothing sent
    assert buffer.add("tail", 0.52) is None
    assert buffer.flush() == "tail"
    assert buffer.flush() is None


def test_slow_tokens_still_come_in_chunks_of_several() -> None:
    buffer = ChunkBuffer(interval_s=0.05, min_deltas=4, max_chars=64, now=0.0)
    chunks = [buffer.add("x", 0.2 * step) for step in range(1, 13)]
    assert [c for c in chunks if c] == ["xxxx"] * 3
