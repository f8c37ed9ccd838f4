"""Gateway apps on the shared Serve instance, reached over HTTP like any client would.

Two applications, each deployed once for this folder's tests on the demo kit (one model
replica each), and removed when the run leaves the folder:

* ``gateway`` — on the session's Redis, no API keys; most tests use it.
* ``secured_gateway`` — API keys on, and a Redis server of its own that tests stop and
  restart to check that the sync endpoints do not need it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from ray import serve

from producer.embedded import EmbeddedRedis
from tests.integration.folder_apps import folder_shared
from tests.integration.serve.conftest import delete_prefix
from workers.app import build_app
from workers.settings import WorkerSettings

# Demo outputs are at most 17 characters: a few tokens past them is enough.
MAX_NEW_TOKENS = 24
API_KEYS = ("gw-test-key-one", "gw-test-key-two")
READY_TIMEOUT_S = 120.0


@dataclass
class GatewayApp:
    """A deployed application and the URL its gateway answers on."""

    settings: WorkerSettings
    url: str
    redis: EmbeddedRedis | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An HTTP request to the gateway, with this app's API key unless headers are given."""
        kwargs.setdefault("headers", self.headers)
        kwargs.setdefault("timeout", 120)
        return requests.request(method, self.url + path, **kwargs)

    def generate(self, adapter: str | None, prompt: str, **params: Any) -> requests.Response:
        """``POST /v1/generate``, greedy and short unless ``params`` say otherwise."""
        body = {
            "adapter": adapter,
            "prompt": prompt,
            "params": {"max_new_tokens": MAX_NEW_TOKENS, **params},
        }
        return self.request("POST", "/v1/generate", json=body)

    def wait(self, job_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
        """The job's record once final, asking ``/wait`` again after each 408."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.request("GET", f"/v1/jobs/{job_id}/wait", params={"timeout": 30})
            if reply.status_code != 408 or time.monotonic() > deadline:
                assert reply.status_code == 200, reply.text
                record: dict[str, Any] = reply.json()
                return record


def gateway_settings(redis_url: str, name: str, **overrides: Any) -> WorkerSettings:
    """A small application for two shared cores: one model replica, fractional CPUs."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "prefix": f"loraqtest:{name}{uuid.uuid4().hex[:10]}",
        "app_name": name,
        "http_route_prefix": f"/{name}",
        "num_model_replicas": 1,
        "model_num_cpus": 0.25,
        "consumer_num_cpus": 0.05,
        "gateway_num_cpus": 0.05,
        "max_adapters_per_replica": 4,
        "max_input_tokens": 256,
        "max_new_tokens": 64,
        "stream_chunk_chars": 2,
        "stream_chunk_ms": 10.0,
        "graceful_shutdown_timeout_s": 5.0,
        # Bounds every wait the property-based run may ask for; tests wait in rounds.
        "http_max_wait_s": 5.0,
        # Small enough that the Batch API's 413 is cheap to reach.
        "max_file_bytes": 256 * 1024,
        **overrides,
    }
    return WorkerSettings(**values)


def deploy(settings: WorkerSettings, base_url: str, **kwargs: Any) -> GatewayApp:
    """Deploy ``settings``' application and wait until its gateway says it is ready."""
    serve.run(build_app(settings), name=settings.app_name, route_prefix=settings.http_route_prefix)
    app = GatewayApp(settings, base_url + settings.http_route_prefix, **kwargs)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        reply = app.request("GET", "/readyz", timeout=10)
        if reply.status_code == 200:
            return app
        time.sleep(0.5)
    raise AssertionError(f"{settings.app_name} not ready: {reply.status_code} {reply.text}")


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, ray_serve: str, redis_url: str) -> GatewayApp:
    """The gateway app on the session's Redis, without API keys; one for this folder."""
    return folder_shared(request, lambda: open_gateway(ray_serve, redis_url))


@contextmanager
def open_gateway(base_url: str, redis_url: str) -> Iterator[GatewayApp]:
    settings = gateway_settings(redis_url, "gw")
    app = deploy(settings, base_url)
    yield app
    serve.delete(settings.app_name)
    delete_prefix(redis_url, settings.prefix)


@pytest.fixture(scope="module")
def secured_gateway(
    request: pytest.FixtureRequest, ray_serve: str, tmp_path_factory: pytest.TempPathFactory
) -> GatewayApp:
    """The gateway app with API keys, on a Redis server of its own (tests may stop it);
    one for this folder."""
    return folder_shared(request, lambda: open_secured_gateway(ray_serve, tmp_path_factory))


@contextmanager
def open_secured_gateway(
    base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayApp]:
    server = EmbeddedRedis(state_dir=tmp_path_factory.mktemp("gw-redis")).start()
    settings = gateway_settings(
        server.url,
        "gwsec",
        api_keys=",".join(API_KEYS),
        http_redis_timeout_s=1.0,
        # After a Redis restart the consumer may leave its first entry pending on a stale
        # connection until it is reclaimed: keep that short here.
        visibility_timeout_s=5.0,
        lease_renew_s=1.0,
    )
    try:
        app = deploy(settings, base_url, redis=server, headers=bearer(API_KEYS[1]))
        yield app
        serve.delete(settings.app_name)
    finally:
        server.stop()


def bearer(key: str) -> dict[str, str]:
    """The ``Authorization`` header for ``key``."""
    return {"Authorization": f"Bearer {key}"}
