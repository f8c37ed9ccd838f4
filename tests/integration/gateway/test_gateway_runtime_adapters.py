"""Adapters registered at run time (``{P}:adapters``) on a live app: the queue, the sync
endpoint and the listings use them; bad registrations fail only the jobs that name them."""

from __future__ import annotations

import redis

from demo.tasks import expected_output, heldout_inputs
from producer import Producer
from producer.adapter_registrations import AdapterRegistrations
from schemas import JobStatus, Keys
from tests.conftest import REPO
from tests.integration.gateway.conftest import MAX_NEW_TOKENS, GatewayApp
from tests.integration.gateway.test_gateway_generate import assert_error

# The demo kit's `reverse` folder again, under a name of its own: inside the adapter root.
MIRROR = REPO / "demo" / "adapters" / "reverse"


def listed(gateway: GatewayApp) -> tuple[list[str], dict[str, int | None]]:
    """Model ids of ``/v1/models`` and adapter ranks of ``/v1/adapters``."""
    models = [card["id"] for card in gateway.request("GET", "/v1/models").json()["data"]]
    adapters = gateway.request("GET", "/v1/adapters").json()["adapters"]
    return models, {adapter["name"]: adapter["rank"] for adapter in adapters}


def test_registered_adapters_serve_and_bad_registrations_fail_their_jobs_only(
    gateway: GatewayApp, r: redis.Redis
) -> None:
    keys = Keys(gateway.settings.prefix)
    registrations = AdapterRegistrations(r, keys)
    registrations.add("mirror", str(MIRROR))
    registrations.add("escape", "/etc")  # a valid registration, outside the adapter roots
    r.hset(keys.adapters, "garbled", "not json")  # what a careless redis-cli user may write
    inputs = heldout_inputs()[40:46]
    try:
        models, ranks = listed(gateway)
        assert "mirror" in models and ranks["mirror"] == 16  # the rank of `reverse`
        assert not {"escape", "garbled"} & (set(models) | set(ranks))

        # The same weights under two names give the same text (the kit is right on most
        # inputs, not all: the configured name is the reference).
        reference = {
            prompt: gateway.generate("reverse", prompt).json()["text"] for prompt in inputs
        }
        assert sum(text == expected_output("reverse", p) for p, text in reference.items()) >= 4
        reply = gateway.generate("mirror", inputs[0])
        assert reply.status_code == 200, reply.text
        assert reply.json()["text"] == reference[inputs[0]]
        message = assert_error(gateway.generate("escape", inputs[0]), 404, "unknown_adapter")
        assert "outside the workers' adapter roots" in message and "/etc" not in message

        params = {"max_new_tokens": MAX_NEW_TOKENS}
        with Producer.from_settings(gateway.settings) as producer:
            jobs = {
                producer.submit(prompt, adapter="mirror", params=params): prompt
                for prompt in inputs[1:]
            }
            refused = {
                producer.submit(inputs[0], adapter=name, params=params): name
                for name in ("escape", "garbled", "never-registered")
            }
            records = producer.wait_many([*jobs, *refused], timeout=120)
        for job_id, prompt in jobs.items():
            record = records[job_id]
            assert record.status is JobStatus.SUCCEEDED, record
            assert record.result is not None
            assert record.result.text == reference[prompt]
        messages = {}
        for job_id, name in refused.items():
            record = records[job_id]
            assert record.status is JobStatus.FAILED and record.error is not None, record
            assert record.error.type.value == "unknown_adapter" and record.attempts == 1
            messages[name] = record.error.message
        assert "outside the workers' adapter roots" in messages["escape"]
        assert "invalid run-time registration" in messages["garbled"]
        assert "is not registered" in messages["never-registered"]
    finally:
        r.hdel(keys.adapters, "mirror", "escape", "garbled")
    # The listings read the registrations afresh: a removed one is gone from them.
    models, ranks = listed(gateway)
    assert "mirror" not in models and "mirror" not in ranks
