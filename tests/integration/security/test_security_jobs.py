"""Issue 15, over HTTP and raw Redis: nobody blocks, spoofs or reads another's jobs."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from producer import Producer
from producer.errors import JobValidationError
from schemas import Keys
from tests.integration.gateway.conftest import GatewayApp, bearer
from tests.integration.security.conftest import ADMIN, KEY_B

WAIT_S = 90.0


def wait_record(r: redis.Redis, keys: Keys, job_id: str) -> dict[str, str]:
    """The record of ``job_id`` once its status is final (read straight from Redis)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        record = {k.decode(): v.decode() for k, v in r.hgetall(keys.job(job_id)).items()}
        if record.get("status") in ("succeeded", "failed", "cancelled", "expired"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {r.hgetall(keys.job(job_id))}")


def job(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"adapter": "upper", "prompt": prompt, "params": {"max_new_tokens": 24}, **fields}


def test_cancelling_an_unknown_id_does_not_block_a_later_job(
    secure_app: GatewayApp, r: redis.Redis
) -> None:
    keys = Keys(secure_app.settings.prefix)
    job_id = f"precancel-{uuid.uuid4().hex[:8]}"
    assert secure_app.request("DELETE", f"/v1/jobs/{job_id}").status_code == 404
    assert not r.exists(keys.cancel(job_id))

    assert secure_app.request("POST", "/v1/jobs", json=job("ab", id=job_id)).status_code == 202
    record = secure_app.wait(job_id)
    assert record["status"] == "succeeded" and record["result"]["text"] == "AB"
    assert not r.exists(keys.cancel(job_id))  # the final write leaves no flag behind


def test_entry_id_shaped_ids_are_refused_everywhere(secure_app: GatewayApp, r: redis.Redis) -> None:
    keys = Keys(secure_app.settings.prefix)
    seconds, micros = r.time()
    squatted = f"{seconds * 1000 + micros // 1000 + 3000}-0"  # a few seconds ahead of Redis

    reply = secure_app.request("POST", "/v1/jobs", json=job("x", id=squatted))
    assert reply.status_code == 422
    assert "id: must not have the shape of a stream entry ID" in reply.json()["error"]["message"]
    with pytest.raises(JobValidationError, match="stream entry ID"):
        Producer(r, prefix=keys.prefix).submit("x", id=squatted)

    # Raw: the squatter's entry fails under its own entry id and goes to the dead letters;
    # the plain producer that later gets that entry ID has its own job run.
    attacker = r.xadd(keys.jobs, {"job": f'{{"id": "{squatted}", "prompt": "evil"}}'}).decode()
    time.sleep(0.5)
    victim = r.xadd(keys.jobs, {"job": '{"adapter": "upper", "prompt": "mine"}'}, id=squatted)
    assert victim.decode() == squatted
    refused = wait_record(r, keys, attacker)
    assert refused["status"] == "failed" and "stream entry ID" in refused["error"]
    assert any(f[b"entry"].decode() == attacker for _, f in r.xrange(keys.dead))
    mine = wait_record(r, keys, squatted)
    assert mine["status"] == "succeeded" and '"text":"MINE"' in mine["result"]


def test_another_key_sees_nothing_of_a_job_and_the_admin_key_sees_all(
    secure_app: GatewayApp, r: redis.Redis
) -> None:
    keys = Keys(secure_app.settings.prefix)
    b_headers, admin_headers = bearer(KEY_B), bearer(ADMIN)
    (job_a,) = secure_app.request("POST", "/v1/jobs", json=job("aa")).json()["ids"]
    (job_b,) = secure_app.request("POST", "/v1/jobs", json=job("bb"), headers=b_headers).json()[
        "ids"
    ]
    raw = r.xadd(keys.jobs, {"job": '{"prompt": "raw"}'}).decode()
    secure_app.wait(job_a)

    for other in (job_a, raw):  # another key's job, and a raw producer's
        for method, path in (
            ("GET", f"/v1/jobs/{other}"),
            ("GET", f"/v1/jobs/{other}/wait?timeout=1"),
            ("DELETE", f"/v1/jobs/{other}"),
        ):
            reply = secure_app.request(method, path, headers=b_headers)
            assert reply.status_code == 404, (method, path, reply.text)
            assert reply.json()["error"]["type"] == "not_found"
    assert not r.exists(keys.cancel(job_a))
    # The 404 says the same as for an id that never existed: ids cannot be probed.
    unknown = secure_app.request("GET", "/v1/jobs/never-was", headers=b_headers).json()
    seen = secure_app.request("GET", f"/v1/jobs/{job_a}", headers=b_headers).json()
    assert unknown["error"]["message"].replace("never-was", job_a) == seen["error"]["message"]

    assert secure_app.request("GET", f"/v1/jobs/{job_b}", headers=b_headers).status_code == 200
    for other in (job_a, job_b, raw):
        reply = secure_app.request("GET", f"/v1/jobs/{other}/wait", headers=admin_headers)
        assert reply.status_code == 200 and reply.json()["status"] == "succeeded", reply.text
    # The record keeps a digest of the key, never the key.
    assert KEY_B.encode() not in b"".join(r.hgetall(keys.job(job_b)).values())


def test_repeated_job_fields_and_json_keys_are_refused(
    secure_app: GatewayApp, r: redis.Redis
) -> None:
    keys = Keys(secure_app.settings.prefix)
    two_fields = r.execute_command(
        "XADD", keys.jobs, "*", "job", '{"prompt": "one"}', "job", '{"prompt": "two"}'
    ).decode()
    two_keys = r.xadd(keys.jobs, {"job": '{"prompt": "one", "prompt": "two"}'}).decode()
    record = wait_record(r, keys, two_fields)
    assert record["status"] == "failed" and "more than one 'job' field" in record["error"]
    record = wait_record(r, keys, two_keys)
    assert record["status"] == "failed" and "duplicate key 'prompt'" in record["error"]

    body = '{"adapter": "upper", "prompt": "a", "adapter": "reverse"}'
    reply = secure_app.request(
        "POST",
        "/v1/jobs",
        data=body,
        headers={**secure_app.headers, "content-type": "application/json"},
    )
    assert reply.status_code == 422 and "duplicate key 'adapter'" in reply.text
