"""``/v1/generate``, health, readiness, the adapter list and the error envelope, over HTTP."""

from __future__ import annotations

import json

import requests

from demo.tasks import ADAPTER_RULES, expected_output, heldout_inputs
from tests.conftest import REPO
from tests.integration.gateway.conftest import MAX_NEW_TOKENS, GatewayApp

ADAPTERS: list[str | None] = [*ADAPTER_RULES, None]


def assert_error(reply: requests.Response, status: int, type: str) -> str:
    """The reply is the error envelope with ``status`` and ``type``; returns the message."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(error) == {"type", "message"} and error["type"] == type, error
    assert error["message"]
    return str(error["message"])


def test_generate_gives_each_adapters_output(gateway: GatewayApp) -> None:
    inputs = heldout_inputs()
    for index, adapter in enumerate(ADAPTERS):
        prompt = inputs[index]
        reply = gateway.generate(adapter, prompt)
        assert reply.status_code == 200, reply.text
        result = reply.json()
        assert result["text"] == expected_output(adapter, prompt), (adapter, prompt, result)
        assert result["finish_reason"] == "stop"
        assert result["adapter"] == adapter
        # Character-level kit: <s>, the characters, <sep>; then each output character and </s>.
        assert result["prompt_tokens"] == len(prompt) + 2
        assert result["completion_tokens"] == len(result["text"]) + 1
        assert result["replica"]
        assert result["timings"]["total_ms"] >= result["timings"]["generation_ms"] > 0


def test_generate_from_messages_and_with_limits(gateway: GatewayApp) -> None:
    prompt = heldout_inputs()[10]
    body = {
        "adapter": "reverse",
        "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": prompt}],
        "params": {"max_new_tokens": MAX_NEW_TOKENS},
    }
    reply = gateway.request("POST", "/v1/generate", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["text"] == prompt[::-1]

    short = gateway.generate("upper", prompt, max_new_tokens=2).json()
    assert short["text"] == prompt.upper()[:2] and short["finish_reason"] == "length"
    stopped = gateway.generate("upper", "abc def", stop=[" D"]).json()
    assert stopped["text"] == "ABC" and stopped["finish_reason"] == "stop"


def test_refusals_carry_the_error_envelope(gateway: GatewayApp) -> None:
    message = assert_error(gateway.generate("no-such-adapter", "ab"), 404, "unknown_adapter")
    assert "no-such-adapter" in message
    assert_error(gateway.generate("../etc", "ab"), 422, "validation")
    message = assert_error(gateway.generate("upper", "ab", max_new_tokens=5000), 400, "validation")
    assert "cap" in message
    assert_error(gateway.generate("upper", "ab", temperature=-1), 422, "validation")
    for body in (
        {"adapter": "upper"},
        {"adapter": "upper", "prompt": "ab", "messages": [{"role": "user", "content": "ab"}]},
        {"prompt": "ab", "surprise": 1},
        {"prompt": ""},
        [],
    ):
        message = assert_error(
            gateway.request("POST", "/v1/generate", json=body), 422, "validation"
        )
        print(f"{json.dumps(body)} -> {message}")
    broken = gateway.request(
        "POST", "/v1/generate", data="{not json", headers={"content-type": "application/json"}
    )
    assert_error(broken, 422, "validation")
    assert_error(gateway.request("GET", "/v1/nothing-here"), 404, "not_found")
    assert_error(gateway.request("PUT", "/v1/generate"), 405, "method_not_allowed")


def test_bodies_over_the_limit_get_413_declared_or_chunked(gateway: GatewayApp) -> None:
    limit = gateway.settings.max_body_bytes
    big = json.dumps({"prompt": "a" * limit}).encode()
    assert_error(gateway.request("POST", "/v1/generate", data=big), 413, "payload_too_large")
    # A generator body goes out chunked, with no Content-Length to check up front.
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    chunked = gateway.request(
        "POST", "/v1/generate", data=chunks, headers={"content-type": "application/json"}
    )
    assert_error(chunked, 413, "payload_too_large")
    # Just under the limit is parsed (and refused for its prompt length, not its size).
    near = json.dumps({"prompt": "a" * (limit - 100)})
    assert_error(gateway.request("POST", "/v1/generate", data=near), 422, "validation")


def test_health_readiness_and_adapters(gateway: GatewayApp) -> None:
    assert gateway.request("GET", "/healthz").json() == {"status": "ok"}
    ready = gateway.request("GET", "/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["model"]["ok"] is True and ready.json()["redis"]["ok"] is True

    assert gateway.generate("title", "ab cd").json()["text"] == "Ab Cd"
    listing = gateway.request("GET", "/v1/adapters").json()
    assert listing["base_model"] == gateway.settings.base_model_name == "model"
    assert len(listing["replicas"]) == 1
    by_name = {adapter["name"]: adapter for adapter in listing["adapters"]}
    assert sorted(by_name) == sorted(ADAPTER_RULES)
    assert by_name["title"]["loaded_on"] == listing["replicas"]
    for name, adapter in by_name.items():
        config = json.loads((REPO / "demo" / "adapters" / name / "adapter_config.json").read_text())
        assert adapter["rank"] == config["r"]
        assert sorted(adapter["target_modules"]) == sorted(config["target_modules"])
