"""The queue over HTTP: submit, read, wait, cancel, and their refusals."""

from __future__ import annotations

import time
import uuid

import redis

from demo.tasks import expected_output, heldout_inputs
from schemas import Keys
from tests.integration.gateway.conftest import MAX_NEW_TOKENS, GatewayApp
from tests.integration.gateway.test_gateway_generate import assert_error


def job(adapter: str | None, prompt: str, **fields: object) -> dict[str, object]:
    return {
        "adapter": adapter,
        "prompt": prompt,
        "params": {"max_new_tokens": MAX_NEW_TOKENS},
        **fields,
    }


def queued_only(r: redis.Redis, app: GatewayApp) -> str:
    """A job whose record says ``queued`` but that no worker will ever take (it has no
    stream entry): it stays queued for as long as a test needs."""
    job_id = f"gw-stuck-{uuid.uuid4().hex[:8]}"
    r.hset(
        Keys(app.settings.prefix).job(job_id),
        mapping={"status": "queued", "adapter": "upper", "created_at": str(time.time())},
    )
    return job_id


def test_one_job_and_a_list_run_and_wait_returns_their_records(gateway: GatewayApp) -> None:
    inputs = heldout_inputs()
    one = gateway.request("POST", "/v1/jobs", json=job("rot13", inputs[20]))
    assert one.status_code == 202, one.text
    [first] = one.json()["ids"]
    plan = [("upper", inputs[21]), (None, inputs[22]), ("title", inputs[23])]
    many = gateway.request("POST", "/v1/jobs", json=[job(a, p) for a, p in plan])
    assert many.status_code == 202, many.text
    ids = many.json()["ids"]
    assert len(ids) == 3 and first not in ids

    for job_id, (adapter, prompt) in zip(
        [first, *ids], [("rot13", inputs[20]), *plan], strict=True
    ):
        record = gateway.wait(job_id)
        assert record["id"] == job_id and record["status"] == "succeeded", record
        assert record["result"]["text"] == expected_output(adapter, prompt)
        got = gateway.request("GET", f"/v1/jobs/{job_id}")
        assert got.status_code == 200 and got.json() == record


def test_submission_with_an_id_is_idempotent(gateway: GatewayApp, r: redis.Redis) -> None:
    keys = Keys(gateway.settings.prefix)
    job_id = f"gw-own-{uuid.uuid4().hex[:8]}"
    before = r.xlen(keys.jobs)
    for _ in range(2):
        reply = gateway.request("POST", "/v1/jobs", json=job("upper", "ab", id=job_id))
        assert reply.status_code == 202 and reply.json() == {"ids": [job_id]}
    assert r.xlen(keys.jobs) == before + 1
    record = gateway.wait(job_id)
    assert record["result"]["text"] == "AB"


def test_wait_answers_408_while_the_job_is_not_final(gateway: GatewayApp, r: redis.Redis) -> None:
    job_id = queued_only(r, gateway)
    reply = gateway.request("GET", f"/v1/jobs/{job_id}/wait", params={"timeout": 0.5})
    assert_error(reply, 408, "timeout")
    # A longer wait than the server allows (http_max_wait_s = 5 here) is cut short.
    started = time.monotonic()
    reply = gateway.request("GET", f"/v1/jobs/{job_id}/wait", params={"timeout": 600})
    assert_error(reply, 408, "timeout")
    assert time.monotonic() - started < 60
    assert gateway.request("GET", f"/v1/jobs/{job_id}").json()["status"] == "queued"


def test_cancel_sets_the_flag_and_refuses_ended_or_unknown_jobs(
    gateway: GatewayApp, r: redis.Redis
) -> None:
    keys = Keys(gateway.settings.prefix)
    job_id = queued_only(r, gateway)
    reply = gateway.request("DELETE", f"/v1/jobs/{job_id}")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"id": job_id, "cancelled": True, "status": "queued"}
    assert r.exists(keys.cancel(job_id))

    [done] = gateway.request("POST", "/v1/jobs", json=job("upper", "cd")).json()["ids"]
    assert gateway.wait(done)["status"] == "succeeded"
    message = assert_error(gateway.request("DELETE", f"/v1/jobs/{done}"), 409, "conflict")
    assert "succeeded" in message


def test_unknown_and_malformed_ids_and_bad_jobs(gateway: GatewayApp, r: redis.Redis) -> None:
    for method, path in (
        ("GET", "/v1/jobs/no-such-job"),
        ("GET", "/v1/jobs/no-such-job/wait"),
        ("DELETE", "/v1/jobs/no-such-job"),
    ):
        assert_error(gateway.request(method, path), 404, "not_found")
    assert_error(gateway.request("GET", "/v1/jobs/bad%20id"), 422, "validation")

    keys = Keys(gateway.settings.prefix)
    before = r.xlen(keys.jobs) if r.exists(keys.jobs) else 0
    for body in (
        {},
        [],
        {"prompt": "ab", "params": {"max_new_tokens": 0}},
        [job("upper", "ab"), {"prompt": "ab", "adapter": "a/b"}],
        {"prompt": "ab", "id": "white space"},
    ):
        assert_error(gateway.request("POST", "/v1/jobs", json=body), 422, "validation")
    # A list with one bad job queues none of them.
    assert (r.xlen(keys.jobs) if r.exists(keys.jobs) else 0) == before
