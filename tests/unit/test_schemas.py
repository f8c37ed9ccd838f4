"""The wire contract: models, checked-in JSON Schema files, and the protocol page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from schemas import (
    InvalidJob,
    Job,
    JobEvent,
    JobRecord,
    JobStatus,
    Keys,
    can_transition,
    parse_job,
    validate_job,
)
from schemas.export import JSON_DIR, rendered

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", re.S)


def schema(name: str) -> dict[str, Any]:
    return json.loads((JSON_DIR / f"{name}.json").read_text())


def test_generated_files_are_current() -> None:
    stale = [p.name for p, text in rendered().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `python -m schemas.export`: stale {stale}"


def protocol_examples() -> list[tuple[str, Any]]:
    found = [(name, json.loads(body)) for name, body in EXAMPLE.findall(PROTOCOL.read_text())]
    assert len(found) >= 6
    return found


@pytest.mark.parametrize(("name", "example"), protocol_examples())
def test_protocol_examples_validate(name: str, example: Any) -> None:
    jsonschema.validate(example, schema(name))


BAD_JOBS: dict[str, tuple[dict[str, Any], str]] = {
    "no prompt": ({"adapter": "upper"}, "exactly one"),
    "prompt and messages": (
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        "exactly one",
    ),
    "bad id characters": ({"id": "a/b c", "prompt": "x"}, "id:"),
    "id too long": ({"id": "a" * 129, "prompt": "x"}, "id:"),
    "max_new_tokens over bound": ({"prompt": "x", "params": {"max_new_tokens": 10**6}}, "8192"),
    "temperature below bound": ({"prompt": "x", "params": {"temperature": -1}}, "temperature"),
    "top_p zero": ({"prompt": "x", "params": {"top_p": 0}}, "top_p"),
    "unknown param": ({"prompt": "x", "params": {"beams": 4}}, "params.beams"),
    "path-like adapter": ({"adapter": "../etc", "prompt": "x"}, "adapter:"),
    "id on another job's events key": ({"id": "j1:events", "prompt": "x"}, "id: must not end"),
    "empty prompt": ({"prompt": ""}, "prompt:"),
    "too many stop strings": ({"prompt": "x", "params": {"stop": ["a"] * 9}}, "stop"),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_bad_jobs_rejected_by_model_and_schema(case: str) -> None:
    payload, needle = BAD_JOBS[case]
    with pytest.raises(InvalidJob, match=re.escape(needle)):
        validate_job(payload)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, schema("job"))


def test_non_json_metadata_is_rejected_naming_the_field() -> None:
    # JSON text cannot hold such a value; only Python callers can send one.
    with pytest.raises(InvalidJob, match=r"metadata\.when"):
        validate_job({"prompt": "x", "metadata": {"when": object()}})


def test_parse_job_reports_non_json_and_non_object() -> None:
    with pytest.raises(InvalidJob, match="not valid JSON"):
        parse_job(b"{nope")
    with pytest.raises(InvalidJob, match="JSON object"):
        parse_job("[1, 2]")


def test_good_job_round_trips_and_empty_adapter_means_base() -> None:
    job = parse_job('{"adapter": "", "prompt": "hi", "params": {"seed": 7}}')
    assert job.adapter_name is None
    assert job.params.seed == 7
    assert Job.model_validate_json(job.model_dump_json()) == job


def test_keys_spell_the_protocol_layout() -> None:
    k = Keys("p")
    assert (k.jobs, k.group, k.events, k.dead, k.adapters) == (
        "p:jobs",
        "p:workers",
        "p:events",
        "p:dead",
        "p:adapters",
    )
    assert (k.job("1-0"), k.job_events("1-0"), k.cancel("1-0")) == (
        "p:job:1-0",
        "p:job:1-0:events",
        "p:cancel:1-0",
    )


def test_record_round_trips_through_hash_fields() -> None:
    record = JobRecord.model_validate(
        {
            "id": "j1",
            "status": "succeeded",
            "adapter": "upper",
            "attempts": 1,
            "result": {
                "text": "HI",
                "finish_reason": "stop",
                "prompt_tokens": 3,
                "completion_tokens": 2,
            },
            "metadata": {"k": [1, 2]},
        }
    )
    fields = record.to_hash()
    assert fields["status"] == "succeeded"
    assert json.loads(fields["result"])["text"] == "HI"
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    assert JobRecord.from_hash("j1", as_bytes) == record


def test_status_machine() -> None:
    assert can_transition(None, JobStatus.QUEUED)
    assert can_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    assert can_transition(JobStatus.RUNNING, JobStatus.SUCCEEDED)
    assert can_transition(JobStatus.RUNNING, JobStatus.QUEUED)
    for final in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED):
        assert final.is_final
        assert not can_transition(final, JobStatus.RUNNING)
        assert not can_transition(final, JobStatus.SUCCEEDED)
    assert not JobStatus.RUNNING.is_final


def test_event_from_stream_fields() -> None:
    event = JobEvent.from_fields({b"event": b"status", b"status": b"failed", b"ts": b"1.5"})
    assert event.is_final and event.ts == 1.5
    chunk = JobEvent.from_fields({"event": "chunk", "text": "ab"})
    assert not chunk.is_final and chunk.text == "ab"


def test_metadata_json_cannot_hold_is_a_validation_error() -> None:
    with pytest.raises(InvalidJob, match="metadata"):
        validate_job({"prompt": "ab", "metadata": {"n": 2**70}})
