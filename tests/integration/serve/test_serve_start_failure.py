"""A model that cannot start (issue 25, point 7): the cause in one line, no job lost.

Settings a replica would fail on are refused by ``loraq serve`` (and ``loraq demo``)
before Redis or Ray start (a bad model path, a hub id not cached, a missing extra); a
replica whose start raises stops ``loraq serve`` after a bounded number of failed starts,
on the first deploy or once the app has run, with its exception in one line. Either way
the jobs queued before stay ``queued`` (none left ``running``) and a good deployment
answers them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import ray
from ray import serve

from producer import Producer
from producer.settings import ClientSettings
from schemas import JobStatus
from tests.integration.serve.conftest import MAX_NEW_TOKENS, delete_prefix, e2e_settings
from workers import launch
from workers.settings import WorkerSettings

DEMO_MODEL = Path(WorkerSettings().model)
LORAQ = Path(sys.executable).with_name("loraq")

# The CLI refuses a bad setting before Ray is imported far enough to start: seconds.
CLI_BOUND_S = 30.0
# Ray Serve tries a replica LORAQ_MAX_START_FAILURES times (at most three for one
# replica) before it gives up, each try loading the engine's libraries in a new process:
# about a minute on two cores, up to three with other work on them (two tries through
# loraq serve took 180 s at a load average of 50).
DEPLOY_BOUND_S = 240.0
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
        [str(LORAQ), "serve"],
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
# 20-70 s on two busy cores; the test allows two (LORAQ_MAX_START_FAILURES=2) and
# Serve's restart delays.
LOOP_BOUND_S = 240.0
GOOD_DEPLOY_WAIT_S = 120.0
APP = "startloop"


def serve_env(redis_url: str, prefix: str, model: Path) -> dict[str, str]:
    """``loraq serve`` joining the session's Ray, one model replica on ``model``."""
    return {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "HF_HUB_OFFLINE": "1",
        "LORAQ_REDIS_URL": redis_url,
        "LORAQ_PREFIX": prefix,
        "LORAQ_APP_NAME": APP,
        "LORAQ_HTTP_ROUTE_PREFIX": f"/{APP}",
        "LORAQ_MODEL": str(model),
        "LORAQ_NUM_MODEL_REPLICAS": "1",
        "LORAQ_MODEL_NUM_CPUS": "0.5",
        "LORAQ_CONSUMER_NUM_CPUS": "0.1",
        "LORAQ_MAX_START_FAILURES": "2",
        "LORAQ_GRACEFUL_SHUTDOWN_TIMEOUT_S": "10",
    }


@pytest.mark.timeout(900)
def test_a_replica_whose_start_raises_stops_loraq_serve_in_one_line_and_no_job_is_lost(
    ray_serve: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """Both ways a replica's start can raise, through ``loraq serve`` (joining the
    session's Ray). On the first deploy, Serve's bounded retries end it. After the app
    has run (a post-start failure: the replica dies and every replacement's start raises,
    as vLLM's memory reservation refuses a replacement on a GPU still held), Serve
    retries without end: the count of failed starts in Redis puts the cause in
    ``/readyz`` and ``loraq top``'s stats, and ``loraq serve`` stops the app at the bound.
    Either way the cause is one line of its output, it exits 2, no job is left running,
    and a good deployment answers the jobs queued meanwhile."""
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    config = (model / "config.json").read_text()
    # A folder that passes the checks before Ray (a config.json) but that transformers
    # refuses inside the replica.
    (model / "config.json").write_text("{}")
    env = serve_env(redis_url, prefix, model)
    first = queue_jobs(redis_url, prefix)
    started = time.monotonic()
    done = subprocess.run(
        [str(LORAQ), "serve"], env=env, capture_output=True, text=True, timeout=LOOP_BOUND_S
    )
    took_s = time.monotonic() - started
    [cause] = refusals(done.stderr, "cannot serve: ")
    print(f"loraq serve refused in {took_s:.1f}s: {cause}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert took_s < DEPLOY_BOUND_S
    assert cause.startswith("LoRAModel failed to start: ValueError: Unrecognized model")
    assert statuses(redis_url, prefix, first) == [JobStatus.QUEUED] * JOBS

    (model / "config.json").write_text(config)
    serving = subprocess.Popen([str(LORAQ), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    log = Log(serving)
    try:
        assert log.serving.wait(DEPLOY_BOUND_S), log.text()
        answered = wait(redis_url, prefix, first)
        handle = serve.get_deployment_handle("LoRAModel", app_name=APP)
        [stats] = asyncio.run(launch.replica_stats(handle, 1)).values()
        (model / "config.json").write_text("{}")
        killed = time.monotonic()
        os.kill(stats["pid"], signal.SIGKILL)
        second = queue_jobs(redis_url, prefix)
        ready = None
        while ready is None and serving.poll() is None:
            time.sleep(0.5)
            ready = readiness_while_failing(ray_serve)
        serving.wait(timeout=LOOP_BOUND_S)
        took_s = time.monotonic() - killed
    finally:
        if serving.poll() is None:
            serving.kill()
        log.reader.join(timeout=30)
    rest = log.text()
    [stopped] = refusals(rest, "stopping: ")
    print(f"loraq serve stopped {took_s:.1f}s after the kill: {stopped}; /readyz said {ready}")
    with producer(redis_url, prefix) as client:
        failing = client.stats().start_failures
    assert answered == [JobStatus.SUCCEEDED] * JOBS
    assert serving.returncode == 2 and "Traceback" not in rest
    assert stopped.startswith("LoRAModel failed to start 2 times in a row")
    assert "ValueError: Unrecognized model" in stopped
    assert ready is not None and "failed start" in ready and "ValueError" in ready
    assert failing is not None and failing.failures >= 2
    assert JobStatus.RUNNING not in statuses(redis_url, prefix, second)

    (model / "config.json").write_text(config)
    settings = e2e_settings(
        redis_url, prefix=prefix, app_name=APP, num_model_replicas=1, model=str(model)
    )
    running = launch.deploy(settings)
    try:
        assert wait(redis_url, prefix, second) == [JobStatus.SUCCEEDED] * JOBS
    finally:
        launch.shutdown(running)


class Log:
    """A process's stderr, read on a thread as it comes (a full pipe would stall it)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.serving = threading.Event()
        self.reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.append(line)
            if "serving; Ctrl-C or SIGTERM stops" in line:
                self.serving.set()

    def text(self) -> str:
        return "".join(self.lines)


def refusals(output: str, start: str) -> list[str]:
    """What follows ``start`` on the lines of ``loraq serve``'s log that hold it."""
    return [line.split(start, 1)[1] for line in output.splitlines() if start in line]


def wait(redis_url: str, prefix: str, ids: list[str]) -> list[JobStatus]:
    with producer(redis_url, prefix) as client:
        records = client.wait_many(ids, timeout=GOOD_DEPLOY_WAIT_S)
    return [records[job_id].status for job_id in ids]


def readiness_while_failing(base_url: str) -> str | None:
    """The model's detail of the app's ``/readyz`` once it names a failed start."""
    try:
        with urllib.request.urlopen(f"{base_url}/{APP}/readyz", timeout=5) as reply:
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
        [str(LORAQ), "demo"],
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
