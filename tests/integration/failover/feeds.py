"""The failover scenarios' parts: the application on a Redis of the test's own, and the
producers that keep submitting through a failover.

Two producers, as the issue asks: the library (:class:`LibraryFeed`, ``submit_many`` with
``LORAQ_REDIS_MIN_REPLICAS``) and a plain Redis client that follows docs/PROTOCOL.md's
durable submission by hand (:class:`RawFeed`). A job counts as handed out only once its
producer got its id back; a producer that got an error submits the same id again, which
both ways make idempotent.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from demo.tasks import expected_output
from producer import Producer
from producer.connection import sync_client
from producer.durability import ReplicationTimeoutError
from producer.errors import LoraqConnectionError
from tests import figures
from tests.integration.chaos.conftest import MODELS, ChaosApp
from tests.integration.serve.conftest import MAX_NEW_TOKENS, prompts_right_on_every_model
from workers import launch
from workers.settings import WorkerSettings

# A producer's pause between submissions: the two together hand out about 300 ids a
# second, so that the primary dies with most of the jobs still to come.
PAUSE_S = 0.005
RETRY_PAUSE_S = 0.05
# Each scenario's figures, for the terminal summary (tests/figures.py).
FIGURES = figures.section("failover figures")

# What docs/PROTOCOL.md tells a plain client to send for a durable submission: the job
# and its record in one script (nothing when the id has a record: a resubmission after an
# error is a no-op), then WAIT on the same connection.
RAW_ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'queued', 'adapter', ARGV[2],
           'created_at', ARGV[3], 'attempts', '0', 'entry', entry)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
SUBMIT_ERRORS = (ReplicationTimeoutError, LoraqConnectionError, redis.RedisError, OSError)


@dataclass
class FailoverApp(ChaosApp):
    """A chaos application whose Redis the settings name (a sentinel set or a cluster)."""

    def client(self) -> redis.Redis:
        return sync_client(self.settings)


def cli_round_trip(app: FailoverApp, env: dict[str, str]) -> tuple[str, str]:
    """``loraq submit --wait`` in a process of its own, its Redis mode from ``env``
    (``LORAQ_*``): the text it printed and what the adapter's rule predicts."""
    prompt = app.pool[0]
    command = [sys.executable, "-m", "producer.cli", "--prefix", app.settings.prefix, "submit"]
    command += ["--adapter", "upper", "--param", f"max_new_tokens={MAX_NEW_TOKENS}"]
    command += ["--wait", "--timeout", "60", prompt]
    done = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)["result"]["text"], expected_output("upper", prompt)


def deploy(base_url: str, settings: WorkerSettings, pool: list[str] | None = None) -> FailoverApp:
    """The application deployed, and the inputs it is right on (``pool``: known already)."""
    running = launch.deploy(settings)
    app = FailoverApp(running, "", base_url=base_url)
    app.pool = pool or prompts_right_on_every_model(running.model, size=30)
    return app


@dataclass
class Feed:
    """Submits ``count`` jobs in a thread; ``returned``: id -> expected text of each job
    whose id came back, ``retries``: submissions sent again after an error."""

    app: FailoverApp
    name: str
    count: int
    seed: int
    returned: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def jobs(self) -> Iterator[tuple[dict[str, Any], str]]:
        rng = random.Random(self.seed)
        for number in range(self.count):
            model, text = rng.choice(MODELS), rng.choice(self.app.pool)
            job = {
                "id": f"{self.name}-{number}",
                "adapter": model,
                "prompt": text,
                "params": {"max_new_tokens": MAX_NEW_TOKENS},
            }
            yield job, expected_output(model, text)

    def start(self) -> Feed:
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"{self.name} still submitting after {timeout_s}s"

    def run(self) -> None:
        raise NotImplementedError

    def note(self, exc: BaseException) -> None:
        self.retries += 1
        if len(self.errors) < 5:
            self.errors.append(repr(exc)[:200])
        time.sleep(RETRY_PAUSE_S)


class LibraryFeed(Feed):
    """``Producer.submit_many`` in chunks of 5, with the app's settings."""

    CHUNK = 5

    def run(self) -> None:
        pending = list(self.jobs())
        with Producer.from_settings(self.app.settings) as producer:
            while pending:
                chunk, pending = pending[: self.CHUNK], pending[self.CHUNK :]
                while True:
                    try:
                        producer.submit_many([job for job, _ in chunk])
                        break
                    except SUBMIT_ERRORS as exc:
                        self.note(exc)
                self.returned.update((job["id"], text) for job, text in chunk)
                time.sleep(PAUSE_S * self.CHUNK)


class RawFeed(Feed):
    """A plain redis-py client: the script above, then ``WAIT``, in one pipeline."""

    def run(self) -> None:
        client = sync_client(self.app.settings.model_copy(update={"redis_min_replicas": 0}))
        keys, replicas = self.app.keys, self.app.settings.redis_min_replicas
        timeout_ms = self.app.settings.redis_wait_timeout_ms
        try:
            for job, text in self.jobs():
                args = [orjson.dumps(job), job["adapter"] or "", repr(time.time()), 86400]
                while True:
                    try:
                        pipe = client.pipeline(transaction=False)
                        pipe.eval(RAW_ENQUEUE, 2, keys.jobs, keys.job(job["id"]), *args)
                        pipe.wait(replicas, timeout_ms)
                        _, acked = pipe.execute()
                        if acked >= replicas:
                            break
                        self.note(RuntimeError(f"WAIT: {acked} of {replicas} replicas"))
                    except SUBMIT_ERRORS as exc:
                        self.note(exc)
                self.returned[job["id"]] = text
                time.sleep(PAUSE_S)
        finally:
            client.close()
