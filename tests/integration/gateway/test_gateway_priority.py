"""A job's ``priority`` over HTTP: carried to the stream as sent, bounds refused plainly."""

from __future__ import annotations

import orjson
import redis

from demo.tasks import heldout_inputs
from schemas import Keys
from tests.integration.gateway.conftest import MAX_NEW_TOKENS, GatewayApp


def test_priority_is_accepted_over_http_and_out_of_range_is_a_422(
    gateway: GatewayApp, r: redis.Redis
) -> None:
    body = {
        "adapter": "upper",
        "prompt": heldout_inputs()[3],
        "params": {"max_new_tokens": MAX_NEW_TOKENS},
        "priority": 9,
    }
    reply = gateway.request("POST", "/v1/jobs", json=body)
    assert reply.status_code == 202, reply.text
    [job_id] = reply.json()["ids"]
    keys = Keys(gateway.settings.prefix)
    payloads = [orjson.loads(fields[b"job"]) for _, fields in r.xrange(keys.jobs)]
    assert {"id": job_id, "priority": 9}.items() <= next(
        p for p in payloads if p.get("id") == job_id
    ).items()
    assert gateway.wait(job_id)["status"] == "succeeded"

    refused = gateway.request("POST", "/v1/jobs", json={**body, "priority": 5000})
    assert refused.status_code == 422
    assert "priority" in refused.text
