"""The Batch API's pure parts: input lines onto jobs, jobs onto output lines, counts and
the end of a batch. No Redis, no HTTP."""

from __future__ import annotations

import orjson
import pytest

from schemas import ErrorType, JobError, JobRecord, JobResult, JobStatus
from schemas.batches import Batch, BatchEndpoint, BatchStatus
from workers.gateway.batch_lines import (
    LineRules,
    StoredLine,
    job_id,
    jsonl,
    output_line,
    parse_lines,
    sort_lines,
)
from workers.gateway.batches import count_lines, end_batch

BASE = "base-model"
BATCH = "batch_abc"
CHAT: BatchEndpoint = "/v1/chat/completions"


def rules(endpoint: BatchEndpoint = "/v1/completions") -> LineRules:
    return LineRules(
        endpoint=endpoint,
        base_model=BASE,
        max_new_tokens=64,
        priority=-10,
        deadline=2e9,
        result_ttl_s=3600,
    )


def line(custom_id: str, url: str = "/v1/completions", **body: object) -> bytes:
    body = {"model": "upper", "prompt": "ab", **body}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def record(status: JobStatus, job: str = "j", text: str = "AB") -> JobRecord:
    result = JobResult(text=text, finish_reason="stop", prompt_tokens=2, completion_tokens=2)
    error = JobError(type=ErrorType.TIMEOUT, message="too slow")
    return JobRecord(
        id=job,
        status=status,
        result=result if status is JobStatus.SUCCEEDED else None,
        error=error if status is JobStatus.FAILED else None,
    )


def test_good_lines_become_jobs_at_the_batch_priority_with_one_id_per_line() -> None:
    content = line("a", max_tokens=8) + b"\n\n" + line("b", model=BASE) + b"\n"
    first, second = parse_lines(content, BATCH, rules())
    assert first.job is not None and second.job is not None
    assert (first.line, second.line) == (1, 3)  # blank lines are skipped, not renumbered
    assert first.job.id == job_id(BATCH, 1) == "batchjob.abc.1"
    assert (first.job.adapter, first.job.prompt, first.job.params.max_new_tokens) == (
        "upper",
        "ab",
        8,
    )
    assert second.job.adapter is None  # the base model's name picks no adapter
    assert first.job.priority == -10 and first.job.deadline == 2e9
    assert first.job.result_ttl == 3600
    assert first.stored() == StoredLine(line=1, custom_id="a", model="upper", job_id=first.job.id)


def test_chat_lines_carry_their_messages() -> None:
    messages = [{"role": "user", "content": "ab"}]
    raw = line("c", url=CHAT, prompt=None, messages=messages, max_completion_tokens=5)
    [parsed] = parse_lines(raw.replace(b'"prompt":null,', b""), BATCH, rules(CHAT))
    assert parsed.job is not None and parsed.error is None
    assert [m.model_dump(exclude_none=True) for m in parsed.job.messages or []] == messages
    assert parsed.job.params.max_new_tokens == 5


@pytest.mark.parametrize(
    ("raw", "code", "word"),
    [
        (b"{not json", "validation", "not JSON"),
        (b"[1, 2]", "validation", "not a JSON object"),
        (b'{"method": "POST"}', "validation", "custom_id"),
        (line("x", url=CHAT), "validation", "endpoint"),
        (line("x", url="/v1/embeddings"), "validation", "url"),
        (line("x", max_tokens=-1), "validation", "max_tokens"),
        (line("x", prompt=["a", "b"]), "validation", "one prompt"),
        (line("x", stream=True), "validation", "stream"),
        (line("x", model="a/b"), "unknown_adapter", "a/b"),
    ],
)
def test_a_bad_line_fails_alone_naming_its_line(raw: bytes, code: str, word: str) -> None:
    good, bad = parse_lines(line("ok") + b"\n" + raw, BATCH, rules())
    assert good.job is not None and bad.job is None and bad.error is not None
    assert (bad.error.code, bad.error.line) == (code, 2)
    assert word in bad.error.message and bad.error.message.startswith("line 2: ")


def test_a_repeated_custom_id_fails_the_later_line() -> None:
    parsed = parse_lines(b"\n".join([line("a"), line("b"), line("a")]), BATCH, rules())
    assert [p.job is not None for p in parsed] == [True, True, False]
    assert parsed[2].error is not None and "repeats line 1" in parsed[2].error.message


@pytest.mark.parametrize(
    ("endpoint", "obj"), [("/v1/completions", "text_completion"), (CHAT, "chat.completion")]
)
def test_a_succeeded_job_answers_in_its_endpoint_shape(endpoint: BatchEndpoint, obj: str) -> None:
    stored = StoredLine(line=1, custom_id="a", model="upper", job_id="j")
    out = output_line(stored, record(JobStatus.SUCCEEDED), endpoint)
    assert out is not None and out.error is None and out.response is not None
    body = out.response.model_dump()["body"]  # Any: the endpoint's own shape
    assert (out.custom_id, out.response.status_code, out.response.request_id) == ("a", 200, "j")
    assert body["object"] == obj and body["model"] == "upper"
    [choice] = body["choices"]
    text = choice["text"] if endpoint == "/v1/completions" else choice["message"]["content"]
    assert text == "AB"


def test_failed_jobs_go_to_the_error_file_and_cancelled_or_unfinished_to_neither() -> None:
    stored = StoredLine(line=4, custom_id="a", job_id="j")
    failed = output_line(stored, record(JobStatus.FAILED), "/v1/completions")
    assert failed is not None and failed.error is not None and failed.response is None
    assert (failed.error.code, failed.error.message, failed.error.line) == (
        "timeout",
        "too slow",
        4,
    )
    expired = output_line(stored, record(JobStatus.EXPIRED), "/v1/completions")
    assert expired is not None and expired.error is not None and expired.error.code == "expired"
    for status in (JobStatus.CANCELLED, JobStatus.RUNNING, JobStatus.QUEUED):
        assert output_line(stored, record(status), "/v1/completions") is None
    assert output_line(stored, None, "/v1/completions") is None


def test_sort_lines_puts_every_line_in_one_file_and_notes_expiry() -> None:
    never_queued = StoredLine(
        line=1, custom_id="bad", error=parse_lines(b"{", BATCH, rules())[0].error
    )
    lines = [
        never_queued,
        *(StoredLine(line=i, custom_id=f"c{i}", job_id=f"j{i}") for i in (2, 3, 4)),
    ]
    records = [record(JobStatus.SUCCEEDED), record(JobStatus.EXPIRED), record(JobStatus.CANCELLED)]
    ended = sort_lines(lines, records, "/v1/completions")
    assert [o.custom_id for o in ended.outputs] == ["c2"]
    assert [e.custom_id for e in ended.errors] == ["bad", "c3"]
    assert ended.expired
    assert not sort_lines(lines[:2], records[:1], "/v1/completions").expired
    written = [orjson.loads(raw) for raw in jsonl(ended.errors).splitlines()]
    assert [w["custom_id"] for w in written] == ["bad", "c3"] and jsonl([]) == b""
    assert len({o.id for o in [*ended.outputs, *ended.errors]}) == 3  # each line its own id


def test_counts_grow_with_ended_jobs_and_cancelled_ones_count_as_neither() -> None:
    lines = [
        StoredLine(line=1, error=None),
        *(StoredLine(line=i, job_id=f"j{i}") for i in range(2, 7)),
    ]
    statuses = [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.EXPIRED,
        JobStatus.CANCELLED,
        JobStatus.RUNNING,
    ]
    counts, pending = count_lines(lines, statuses)
    assert (counts.total, counts.completed, counts.failed, pending) == (6, 1, 3, 1)
    counts, pending = count_lines(lines, [*statuses[:4], None])  # no record yet: pending
    assert pending == 1
    counts, pending = count_lines(lines, [])  # before any job is read: only unqueued lines
    assert (counts.completed, counts.failed, pending) == (0, 1, 0)


def batch(status: BatchStatus, expires_at: int = 1000) -> Batch:
    return Batch(
        id=BATCH,
        endpoint="/v1/completions",
        input_file_id="file-x",
        status=status,
        created_at=0,
        expires_at=expires_at,
    )


@pytest.mark.parametrize(
    ("status", "expired", "now", "end"),
    [
        (BatchStatus.FINALIZING, False, 10, BatchStatus.COMPLETED),
        # Expired jobs before the window ran out (their own deadline): still completed.
        (BatchStatus.FINALIZING, True, 10, BatchStatus.COMPLETED),
        (BatchStatus.FINALIZING, True, 1000, BatchStatus.EXPIRED),
        (BatchStatus.CANCELLING, True, 1000, BatchStatus.CANCELLED),
        (BatchStatus.CANCELLING, False, 10, BatchStatus.CANCELLED),
    ],
)
def test_end_batch_picks_the_final_status_and_stamps_it(
    status: BatchStatus, expired: bool, now: int, end: BatchStatus
) -> None:
    ended = batch(status)
    end_batch(ended, expired=expired, now=now)
    assert ended.status is end and ended.status.is_final
    assert getattr(ended, f"{end.value}_at") == now


def test_a_lines_response_format_reaches_its_job_and_a_bad_one_fails_the_line() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    good = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"not": {}}}}
    content = line("g", response_format=good) + b"\n" + line("b", response_format=bad)
    parsed, refused = parse_lines(content, BATCH, rules())
    assert parsed.job is not None
    dumped = parsed.job.params.model_dump(mode="json", exclude_none=True)
    assert dumped["response_format"] == good
    assert refused.job is None and refused.error is not None
    assert "unsupported keyword 'not'" in refused.error.message
