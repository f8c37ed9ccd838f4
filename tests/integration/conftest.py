"""One Ray and one Serve instance for every end-to-end test of the run.

The Serve tests and the gateway tests deploy their applications into it, each under an
application name and HTTP route prefix of its own; starting Ray twice in one process fails.
An application that a folder's tests share is deployed once for that folder and removed
when the run leaves the folder (tests/integration/folder_apps.py), not kept idle to the
session's end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import ray
from ray import serve

from producer.embedded import free_port
from tests.conftest import REPO
from tests.integration.folder_apps import leave_folders
from workers.launch import allow_slow_proxy_start, serve_start_options
from workers.settings import WorkerSettings

DEMO_KIT = REPO / "demo" / "model"
SERVE_HTTP_HOST = "127.0.0.1"
# Where the object-store tests' S3 server listens (tests/integration/adapters). The
# workers' standard credential chain points there before Ray starts, so that the model
# replicas, which are Ray's worker processes, see it too.
S3_PORT = free_port()
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "loraq-test",
    "AWS_SECRET_ACCESS_KEY": "loraq-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
}
for _name, _value in S3_ENV.items():
    os.environ.setdefault(_name, _value)
METRICS_REPORT_INTERVAL_MS = 1000
# Lower than the default, so that the slow-header test is quick; still above keep-alive.
HEADER_TIMEOUT_S = 6.0


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[str]:
    """A local Ray with Serve for the whole run; the base URL of Serve's HTTP proxy."""
    if not (DEMO_KIT / "config.json").exists():
        pytest.skip(f"the demo kit is missing at {DEMO_KIT} (python -m demo.build)")
    port = free_port()
    allow_slow_proxy_start()
    ray.init(
        # A Ray of the run's own: with no address, ray.init() would join the cluster last
        # recorded on the machine (a `ray start` of someone else's) instead.
        address="local",
        # Logical CPUs, for placement only: the session-long apps (Serve jobs, gateways,
        # chaos, metrics, autoscaling) must all fit beside each other; they idle mostly.
        num_cpus=max(8, os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
        # Metrics reach the node's /metrics (see workers.launch.metrics_urls) within
        # about a second instead of Ray's default ten.
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
    settings = WorkerSettings(
        http_host=SERVE_HTTP_HOST, http_port=port, http_header_timeout_s=HEADER_TIMEOUT_S
    )
    serve.start(**serve_start_options(settings))  # as loraq serve starts it
    yield f"http://{SERVE_HTTP_HOST}:{port}"
    leave_folders(None)  # a run stopped early (-x, Ctrl-C) left in a folder
    # Each app's fixture deleted it; Serve's controller and proxy go with Ray (as in
    # workers.launch.shutdown: serve.shutdown() makes Ray print raylet lines).
    ray.shutdown()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """The apps of the folders the run leaves now go (tests/integration/folder_apps.py);
    first, so that after the last test they go before the session's own fixtures (Ray)."""
    leave_folders(None if nextitem is None else nextitem.path.parent)
