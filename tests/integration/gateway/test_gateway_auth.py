"""API keys: every endpoint but the health checks needs one; keys never reach the logs."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

import openai
import pytest
import ray
from fastapi import FastAPI

from tests.integration.gateway.conftest import API_KEYS, GatewayApp, bearer, gateway_settings
from tests.integration.gateway.test_gateway_generate import assert_error
from workers.gateway.app import create_app
from workers.gateway.model_client import ModelClient
from workers.gateway.services import Services

GUARDED = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/adapters", None),
    ("POST", "/v1/generate", {"adapter": "upper", "prompt": "ab", "params": {"max_new_tokens": 8}}),
    ("POST", "/v1/completions", {"model": "upper", "prompt": "ab", "max_tokens": 8}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "upper", "messages": [{"role": "user", "content": "ab"}]},
    ),
    ("POST", "/v1/jobs", {"adapter": "upper", "prompt": "ab"}),
    ("GET", "/v1/jobs/some-job", None),
    ("GET", "/v1/jobs/some-job/wait?timeout=0", None),
    ("DELETE", "/v1/jobs/some-job", None),
    ("POST", "/v1/files", None),
    ("GET", "/v1/files/file-x", None),
    ("GET", "/v1/files/file-x/content", None),
    ("DELETE", "/v1/files/file-x", None),
    ("POST", "/v1/batches", {"input_file_id": "file-x", "endpoint": "/v1/completions"}),
    ("GET", "/v1/batches", None),
    ("GET", "/v1/batches/batch_x", None),
    ("POST", "/v1/batches/batch_x/cancel", None),
]
WRONG = [
    {},
    bearer("not-a-key"),
    bearer(API_KEYS[0][:-1]),
    bearer(API_KEYS[0] + "x"),
    {"Authorization": API_KEYS[0]},
    {"Authorization": f"Basic {API_KEYS[0]}"},
    bearer(",".join(API_KEYS)),
]


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_guarded_endpoints_need_a_right_key(
    secured_gateway: GatewayApp, method: str, path: str, body: object
) -> None:
    for headers in WRONG:
        reply = secured_gateway.request(method, path, json=body, headers=headers)
        message = assert_error(reply, 401, "unauthorized")
        assert reply.headers["www-authenticate"] == "Bearer"
        assert not any(key in message for key in API_KEYS)
    for key in API_KEYS:
        reply = secured_gateway.request(method, path, json=body, headers=bearer(key))
        assert reply.status_code != 401, reply.text
        assert reply.status_code in (200, 202, 400, 404), reply.text


def test_health_checks_are_open(secured_gateway: GatewayApp) -> None:
    assert secured_gateway.request("GET", "/healthz", headers={}).status_code == 200
    ready = secured_gateway.request("GET", "/readyz", headers={})
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_openai_client_with_the_key(secured_gateway: GatewayApp) -> None:
    url = secured_gateway.url + "/v1"
    with openai.OpenAI(base_url=url, api_key=API_KEYS[0], max_retries=0) as client:
        reply = client.completions.create(model="upper", prompt="ab cd", temperature=0)
        assert reply.choices[0].text == "AB CD"
    with (
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()


def test_openapi_document_and_docs_need_a_key(secured_gateway: GatewayApp) -> None:
    for path in ("/openapi.json", "/docs"):
        assert_error(secured_gateway.request("GET", path, headers={}), 401, "unauthorized")
        assert secured_gateway.request("GET", path).status_code == 200


def test_openapi_document_declares_bearer_auth(secured_gateway: GatewayApp) -> None:
    document = secured_gateway.request("GET", "/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    generate = document["paths"]["/v1/generate"]["post"]
    assert generate["security"] == [{"HTTPBearer": []}] and "401" in generate["responses"]
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_keys_appear_in_no_log(secured_gateway: GatewayApp) -> None:
    assert not any(key in repr(secured_gateway.settings) for key in API_KEYS)
    # This run's own Ray session: /tmp/ray/session_latest is whichever Ray on the machine
    # started last (another run's, or a test's subprocess cluster started without a
    # temp dir of its own).
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    if not logs.is_dir():
        pytest.skip(f"no Ray session logs at {logs}")
    for path in logs.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaked = [key for key in (*API_KEYS, "not-a-key") if key.encode() in data]
            assert not leaked, f"{leaked} in {path}"


def test_docs_public_keeps_the_document_and_docs_open_but_nothing_else() -> None:
    # The same app the deployment serves, called in-process: only the settings differ
    # from secured_gateway's, and no route here reaches the model or Redis.
    settings = gateway_settings(
        "redis://127.0.0.1:1", "gwdocs", api_keys=",".join(API_KEYS), http_docs_public=True
    )
    app = create_app(Services.create(settings, cast(ModelClient, None)))
    for path in ("/openapi.json", "/docs"):
        assert asyncio.run(status_of(app, path, {})) == 200, path
    assert asyncio.run(status_of(app, "/v1/models", {})) == 401
    assert asyncio.run(status_of(app, "/v1/batches", bearer("not-a-key"))) == 401


async def status_of(app: FastAPI, path: str, headers: dict[str, str]) -> int:
    """The status of ``GET path`` from ``app``, as an ASGI server would ask it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    started: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])

    await app(scope, receive, send)
    return started[0]
