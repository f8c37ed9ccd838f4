"""Bad payloads pushed raw with redis-cli: answered ``failed``, dead-lettered; the app goes on."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
import ray
import redis

from schemas import ErrorType, JobStatus, codec
from tests.conftest import redis_cli
from tests.integration.serve.conftest import LiveApp, assert_events_end_with_status
from workers.app import MODEL_DEPLOYMENT

# (name, payload, id it carries or None, error type, words the message must hold)
CASES = [
    ("not json", "this is {not json", None, ErrorType.VALIDATION, "not valid JSON"),
    (
        "no prompt",
        '{"id": "bad-no-prompt", "adapter": "upper"}',
        "bad-no-prompt",
        ErrorType.VALIDATION,
        "exactly one of 'prompt' and 'messages'",
    ),
    (
        "unknown adapter",
        '{"id": "bad-adapter", "adapter": "sqll", "prompt": "hi"}',
        "bad-adapter",
        ErrorType.UNKNOWN_ADAPTER,
        "sqll",
    ),
    (
        "params out of bounds",
        '{"prompt": "hi", "params": {"max_new_tokens": 100000, "temperature": 9}}',
        None,
        ErrorType.VALIDATION,
        "params.max_new_tokens",
    ),
    (
        "path-like adapter",
        '{"id": "bad-path", "adapter": "../../etc/passwd", "prompt": "hi"}',
        "bad-path",
        ErrorType.VALIDATION,
        "adapter",
    ),
    ("invalid id", '{"id": "a b/c", "prompt": "hi"}', None, ErrorType.VALIDATION, "id"),
]


@pytest.mark.parametrize(("name", "payload", "own_id", "error_type", "words"), CASES)
def test_a_bad_payload_fails_clearly_lands_in_dead_and_the_next_job_succeeds(
    live_app: LiveApp,
    r: redis.Redis,
    name: str,
    payload: str,
    own_id: str | None,
    error_type: ErrorType,
    words: str,
) -> None:
    keys = live_app.keys
    entry_id = redis_cli(live_app.redis_url, "XADD", keys.jobs, "*", "job", payload).strip()
    good = {"adapter": "reverse", "prompt": "abc de", "params": {"max_new_tokens": 16}}
    good_id = redis_cli(
        live_app.redis_url, "XADD", keys.jobs, "*", "job", orjson.dumps(good).decode()
    ).strip()
    job_id = own_id or entry_id
    with live_app.producer() as producer:
        records = producer.wait_many([job_id, good_id], timeout=60)

    bad = records[job_id]
    assert bad.status is JobStatus.FAILED, name
    assert bad.error is not None and bad.error.type is error_type, bad.error
    assert words in bad.error.message, bad.error.message
    assert_events_end_with_status(r, keys, bad)
    dead = [
        codec.decode_fields(f) for _, f in r.xrange(keys.dead) if f[b"entry"] == entry_id.encode()
    ]
    assert len(dead) == 1, f"{name}: not dead-lettered once"
    assert (dead[0]["id"], dead[0]["payload"]) == (job_id, payload)
    assert orjson.loads(dead[0]["error"])["type"] == error_type.value

    assert records[good_id].status is JobStatus.SUCCEEDED
    assert records[good_id].result is not None and records[good_id].result.text == "ed cba"
    assert r.xpending(keys.jobs, keys.group)["pending"] == 0


def test_an_entry_without_job_field_is_answered_under_its_entry_id(
    live_app: LiveApp, r: redis.Redis
) -> None:
    keys = live_app.keys
    entry_id = redis_cli(live_app.redis_url, "XADD", keys.jobs, "*", "prompt", "hi").strip()
    with live_app.producer() as producer:
        record = producer.wait(entry_id, timeout=60)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and "no 'job' field" in record.error.message


def model_replica_logs(app_name: str) -> str:
    """What Serve logged on this Ray's LoRAModel replicas of ``app_name`` (their files)."""
    # Ray has no public call for the session's log folder; the driver's node knows it.
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(
        path.read_text(errors="replace")
        for path in logs.glob(f"replica_{app_name}_{MODEL_DEPLOYMENT}_*.log")
    )


def test_an_unknown_adapter_fails_its_job_without_an_error_logged_on_the_replica(
    live_app: LiveApp,
) -> None:
    name = f"nosuch-{uuid.uuid4().hex[:8]}"
    with live_app.producer() as producer:
        record = producer.wait(producer.submit("hi", adapter=name), timeout=60)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.type is ErrorType.UNKNOWN_ADAPTER
    assert name in record.error.message
    # Refused before Serve's multiplexed loader, which would log "Failed to load model"
    # at ERROR; nothing about it is a replica's error.
    assert name not in model_replica_logs(live_app.settings.app_name)
