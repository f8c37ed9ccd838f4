"""With Redis down, sync generation and the OpenAI API still answer; the queue says 503."""

from __future__ import annotations

import time

import openai

from demo.tasks import expected_output, heldout_inputs
from tests.integration.gateway.conftest import API_KEYS, MAX_NEW_TOKENS, GatewayApp
from tests.integration.gateway.test_gateway_generate import assert_error

# "Quickly": the gateway's Redis timeout is 1 s here; nothing may hang near the client's 120 s.
QUICK_S = 10.0


def submit(app: GatewayApp, adapter: str, prompt: str) -> str:
    body = {"adapter": adapter, "prompt": prompt, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
    reply = app.request("POST", "/v1/jobs", json=body)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["ids"][0])


def test_sync_paths_survive_a_redis_outage_and_the_queue_comes_back(
    secured_gateway: GatewayApp,
) -> None:
    app = secured_gateway
    server = app.redis
    assert server is not None
    inputs = heldout_inputs()
    before = submit(app, "upper", inputs[60])
    assert app.wait(before)["status"] == "succeeded"

    server.stop()
    try:
        prompt = inputs[61]
        reply = app.generate("reverse", prompt)
        assert reply.status_code == 200 and reply.json()["text"] == prompt[::-1]
        with openai.OpenAI(base_url=app.url + "/v1", api_key=API_KEYS[0], max_retries=0) as client:
            completion = client.completions.create(model="title", prompt=prompt, temperature=0)
            assert completion.choices[0].text == expected_output("title", prompt)
            chat = client.chat.completions.create(
                model="rot13", messages=[{"role": "user", "content": prompt}], temperature=0
            )
            assert chat.choices[0].message.content == expected_output("rot13", prompt)
            stream = client.completions.create(
                model="upper", prompt=prompt, temperature=0, stream=True
            )
            assert "".join(c.choices[0].text for c in stream) == prompt.upper()

        ready = app.request("GET", "/readyz", headers={})
        assert ready.status_code == 200
        assert ready.json()["model"]["ok"] is True and ready.json()["redis"]["ok"] is False

        for method, path, body in (
            ("POST", "/v1/jobs", {"adapter": "upper", "prompt": "ab"}),
            ("GET", f"/v1/jobs/{before}", None),
            ("GET", f"/v1/jobs/{before}/wait?timeout=30", None),
            ("DELETE", f"/v1/jobs/{before}", None),
        ):
            started = time.monotonic()
            reply = app.request(method, path, json=body)
            took = time.monotonic() - started
            message = assert_error(reply, 503, "redis_unavailable")
            assert took < QUICK_S, f"{method} {path} took {took:.1f}s"
            print(f"{method} {path}: 503 in {took:.2f}s: {message}")
    finally:
        server.start()

    # The same gateway replica, no restart: its connections recover on their own.
    record = app.request("GET", f"/v1/jobs/{before}").json()
    assert record["status"] == "succeeded"
    assert record["result"]["text"] == expected_output("upper", inputs[60])
    after = submit(app, "rot13", inputs[62])
    waited = app.wait(after)
    assert waited["status"] == "succeeded", waited
    assert waited["result"]["text"] == expected_output("rot13", inputs[62])
