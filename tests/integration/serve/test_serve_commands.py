"""``loraq demo`` and ``loraq serve`` as a user runs them, in a process of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import ray

from producer import Producer
from producer.embedded import free_port
from producer.settings import ClientSettings
from schemas import JobStatus
from tests.conftest import REPO
from tests.integration.serve.conftest import delete_prefix

LORAQ = [sys.executable, "-m", "producer.cli"]


@pytest.fixture
def own_prefix(redis_url: str) -> Iterator[str]:
    name = f"loraqtest:cmd{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(redis_url, name)


def command_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {
        **env,
        "LORAQ_REDIS_URL": redis_url,
        "LORAQ_PREFIX": prefix,
        "LORAQ_HTTP_PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


# What a clean demo run never prints: warnings (FutureWarning from transformers once),
# tracebacks, ERROR lines, and Ray's notes on Serve's controller killed at shutdown.
NOT_FOR_THE_USER = ("Traceback", "Warning", "WARNING", "ERROR", "(raylet)", "killed by ray.kill")


@pytest.mark.ray  # a Ray of its own
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_loraq_demo_runs_every_adapter_prints_only_its_own_lines_and_exits_0(
    redis_url: str, own_prefix: str
) -> None:
    started = time.monotonic()
    out = subprocess.run(
        [*LORAQ, "demo"],
        cwd=REPO,
        # A free metrics port: a taken one is a fair warning, not the demo's noise.
        env=command_env(redis_url, own_prefix, LORAQ_METRICS_EXPORT_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=380,
    )
    print(out.stdout[-3000:], out.stderr[-3000:])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "all 7 requests gave their adapter's output" in out.stdout
    for line in ("starting Ray", "redis: ", "queue: XADD", "http: ", "shutting down"):
        assert line in out.stdout
    for column in ("adapter", "prompt", "output", "latency", "replica", "redis-cli", "http"):
        assert column in out.stdout
    for text in NOT_FOR_THE_USER:
        assert text not in out.stdout + out.stderr, text
    print(f"loraq demo took {time.monotonic() - started:.0f}s")


@pytest.mark.timeout(300)
def test_loraq_serve_joins_ray_serves_and_stops_on_sigterm(
    ray_serve: str, redis_url: str, own_prefix: str
) -> None:
    env = command_env(
        redis_url,
        own_prefix,
        RAY_ADDRESS=ray.get_runtime_context().gcs_address,
        LORAQ_APP_NAME="e2e-serve",
        LORAQ_HTTP_ROUTE_PREFIX="/e2e-serve",
        LORAQ_MODEL_NUM_CPUS="0.25",
        LORAQ_CONSUMER_NUM_CPUS="0.1",
    )
    process = subprocess.Popen(
        [*LORAQ, "serve"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    log = []
    try:
        for line in process.stderr:
            log.append(line)
            if "serving; Ctrl-C or SIGTERM stops" in line:
                break
        text = "".join(log)
        assert "redis: redis://" in text and own_prefix in text
        assert "adapters: reverse, rot13, title, upper" in text
        settings = ClientSettings(redis_url=redis_url, prefix=own_prefix)
        with Producer.from_settings(settings) as producer:
            job_id = producer.submit("ab cd", adapter="upper", params={"max_new_tokens": 16})
            record = producer.wait(job_id, timeout=120)
        assert record.status is JobStatus.SUCCEEDED
        assert record.result is not None and record.result.text == "AB CD"
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=120)
    assert process.returncode == 0, "".join(log) + (rest or "")
    assert "stopped" in (rest or "")
