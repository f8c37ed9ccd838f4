"""A model that cannot start (issue 25, point 7): the cause in one line, no job lost.

Settings a replica would fail on are refused by ``loraq serve`` before Redis or Ray start
(a bad model path, a missing extra); a replica whose start raises fails the deploy after
Serve's bounded retries with its exception in one line. Either way the jobs queued before
stay ``queued`` (none left ``running``) and a good deployment answers them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from producer import Producer
from producer.settings import ClientSettings
from schemas import JobStatus
from tests.integration.serve.conftest import MAX_NEW_TOKENS, delete_prefix, e2e_settings
from workers import launch
from workers.settings import WorkerSettings

DEMO_MODEL = Path(WorkerSettings().model)

# The CLI refuses a bad setting before Ray is imported far enough to start: seconds.
CLI_BOUND_S = 30.0
# Ray Serve tries a replica three times (one replica) before it gives up: about a minute
# on two busy cores, each try loading the engine's libraries.
DEPLOY_BOUND_S = 180.0
JOBS = 4


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"loraqtest:start{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(redis_url, name)


def producer(redis_url: str, prefix: str) -> Producer:
    return Producer.from_settings(ClientSettings(redis_url=redis_url, prefix=prefix))


def queue_jobs(redis_url: str, prefix: str) -> list[str]:
    with producer(redis_url, prefix) as client:
        return client.submit_many(
            [
                {"prompt": f"hello {i}", "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                for i in range(JOBS)
            ]
        )


def statuses(redis_url: str, prefix: str, ids: list[str]) -> list[JobStatus]:
    with producer(redis_url, prefix) as client:
        records = [client.get(job_id) for job_id in ids]
    return [record.status for record in records if record is not None]


def loraq_serve(redis_url: str, prefix: str, **env: str) -> tuple[int, list[str], float]:
    """``loraq serve`` under ``env``: its exit code, its output's lines and its time."""
    started = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("loraq")), "serve"],
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "LORAQ_REDIS_URL": redis_url,
            "LORAQ_PREFIX": prefix,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=CLI_BOUND_S * 2,
    )
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, lines, time.monotonic() - started


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("env", "setting", "words"),
    [
        ({"LORAQ_MODEL": "/no/such/model"}, "LORAQ_MODEL", "no such folder: /no/such/model"),
        ({"LORAQ_MODEL": "no-org/no-model"}, "LORAQ_MODEL", "HF_HUB_OFFLINE=1"),
        (
            {"LORAQ_ADAPTER_SOURCE": "gs://a-bucket/adapters"},
            "LORAQ_ADAPTER_SOURCE",
            "pip install 'loraq[gcs]'",
        ),
    ],
    ids=["model-path", "hub-id-offline", "missing-extra"],
)
def test_a_setting_the_replicas_cannot_start_with_is_one_line_and_leaves_jobs_queued(
    redis_url: str, prefix: str, env: dict[str, str], setting: str, words: str
) -> None:
    if "gcs" in words and _importable("gcsfs"):
        pytest.skip("gcsfs is installed here: the gcs extra is not missing")
    ids = queue_jobs(redis_url, prefix)
    code, lines, took_s = loraq_serve(redis_url, prefix, **env)
    print(f"loraq serve refused in {took_s:.1f}s: {lines}")
    assert code == 2
    assert len(lines) == 1, lines
    assert setting in lines[0] and words in lines[0]
    assert took_s < CLI_BOUND_S
    assert statuses(redis_url, prefix, ids) == [JobStatus.QUEUED] * JOBS


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# Each failed start of a replacement loads the engine's libraries in a new process:
# 20-50 s on two busy cores; the test allows two (LORAQ_MAX_START_FAILURES=2) and
# Serve's restart delays.
LOOP_BOUND_S = 240.0
GOOD_DEPLOY_WAIT_S = 120.0


@pytest.mark.timeout(900)
def test_a_replica_whose_start_raises_stops_the_app_in_one_line_and_no_job_is_lost(
    ray_serve: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """Both ways a replica's start can raise. On the first deploy, Serve's bounded retries
    end it with the replica's exception in one line. After the app has run (a post-start
    failure: the replica dies and every replacement's start raises, as vLLM's memory
    reservation refuses a replacement on a GPU still held), Serve retries without end:
    the count of failed starts in Redis puts the cause in ``/readyz`` and ``loraq top``'s
    stats, and ``loraq serve``'s check (:func:`launch.stopped_because`) stops the app at
    the bound. Either way no job is left running, and a good deployment answers the jobs
    queued meanwhile."""
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    config = (model / "config.json").read_text()
    # A folder that passes the checks before Ray (a config.json) but that transformers
    # refuses inside the replica.
    (model / "config.json").write_text("{}")
    settings = e2e_settings(
        redis_url,
        prefix=prefix,
        app_name="startloop",
        num_model_replicas=1,
        model=str(model),
        max_start_failures=2,
    )
    first = queue_jobs(redis_url, prefix)
    started = time.monotonic()
    with pytest.raises(launch.StartFailed) as failed:
        launch.deploy(settings)
    took_s = time.monotonic() - started
    cause = str(failed.value)
    print(f"first deploy failed in {took_s:.1f}s: {cause}")
    assert "\n" not in cause
    assert cause.startswith("LoRAModel failed to start: ValueError: Unrecognized model")
    assert took_s < DEPLOY_BOUND_S
    assert statuses(redis_url, prefix, first) == [JobStatus.QUEUED] * JOBS

    (model / "config.json").write_text(config)
    running = launch.deploy(settings)
    try:
        answered = wait(redis_url, prefix, first)
        [stats] = asyncio.run(launch.replica_stats(running.model, 1)).values()
        (model / "config.json").write_text("{}")
        killed = time.monotonic()
        os.kill(stats["pid"], signal.SIGKILL)
        second = queue_jobs(redis_url, prefix)
        stopped, ready = None, None
        while stopped is None and time.monotonic() - killed < LOOP_BOUND_S:
            time.sleep(0.5)
            ready = ready or readiness_while_failing(ray_serve)
            stopped = launch.stopped_because(running)
        took_s = time.monotonic() - killed
        print(f"stopped {took_s:.1f}s after the kill: {stopped}; /readyz said {ready}")
        with producer(redis_url, prefix) as client:
            failing = client.stats().start_failures
    finally:
        launch.shutdown(running)
    assert answered == [JobStatus.SUCCEEDED] * JOBS
    assert stopped is not None and "\n" not in stopped
    assert stopped.startswith("LoRAModel failed to start 2 times in a row")
    assert "ValueError: Unrecognized model" in stopped
    assert ready is not None and "failed start" in ready and "ValueError" in ready
    assert failing is not None and failing.failures >= 2
    assert JobStatus.RUNNING not in statuses(redis_url, prefix, second)

    (model / "config.json").write_text(config)
    running = launch.deploy(settings)
    try:
        assert wait(redis_url, prefix, second) == [JobStatus.SUCCEEDED] * JOBS
    finally:
        launch.shutdown(running)


def wait(redis_url: str, prefix: str, ids: list[str]) -> list[JobStatus]:
    with producer(redis_url, prefix) as client:
        records = client.wait_many(ids, timeout=GOOD_DEPLOY_WAIT_S)
    return [records[job_id].status for job_id in ids]


def readiness_while_failing(base_url: str) -> str | None:
    """The model's detail of the app's ``/readyz`` once it names a failed start."""
    try:
        with urllib.request.urlopen(f"{base_url}/startloop/readyz", timeout=5) as reply:
            body = reply.read()
    except urllib.error.HTTPError as error:  # 503: no model replica answers
        body = error.read()
    except OSError:
        return None
    detail = str(orjson.loads(body)["model"]["detail"])
    return detail if "failed start" in detail else None


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LORAQ_MODEL": "/no/such/model"}, "LORAQ_MODEL: no such folder: /no/such/model"),
        ({"LORAQ_MAX_BATCH_SIZE": "-3"}, "LORAQ_MAX_BATCH_SIZE"),
    ],
    ids=["model-path", "bad-value"],
)
def test_the_demo_refuses_a_bad_setting_in_one_line_without_a_traceback(
    redis_url: str, prefix: str, env: dict[str, str], words: str
) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("loraq")), "demo"],
        env={**os.environ, "LORAQ_REDIS_URL": redis_url, "LORAQ_PREFIX": prefix, **env},
        capture_output=True,
        text=True,
        timeout=CLI_BOUND_S * 2,
    )
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 2
    assert "Traceback" not in output
    [refusal] = [line for line in output.splitlines() if line.startswith("cannot serve:")]
    assert words in refusal
