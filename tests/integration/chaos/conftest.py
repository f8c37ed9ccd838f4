"""The chaos suite: real replicas killed, Redis restarted and fed garbage; every job counted.

Each scenario runs a workload on a deployed application, breaks something, and ends with
the same accounting (:mod:`tests.integration.chaos.accounting`). Its figures are printed
in pytest's terminal summary, so a CI log shows them without ``-s``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from ray import serve

from demo.tasks import ADAPTER_RULES, expected_output
from producer.embedded import EmbeddedRedis
from tests.integration.serve.conftest import (
    MAX_NEW_TOKENS,
    LiveApp,
    delete_prefix,
    e2e_settings,
    prompts_right_on_every_model,
)
from workers import launch
from workers.app import CONSUMER_DEPLOYMENT, MODEL_DEPLOYMENT
from workers.settings import WorkerSettings

JOBS = 300
# A scenario breaks something once this many of its JOBS have ended, with at least
# LEFT_AT_BREAK still to run.
STARTED_BEFORE_BREAK = 30
LEFT_AT_BREAK = 100
# Claimed jobs per consumer window (its in-flight jobs come on top).
CHAOS_WINDOW = 48
# Short leases so that a dead or paused consumer's jobs move on within seconds.
VISIBILITY_TIMEOUT_S = 4.0
LEASE_RENEW_S = 1.0
HEALTHY_TIMEOUT_S = 180.0
# The cap on max_new_tokens, raised for the long jobs that are cancelled while running.
LONG_TOKENS = 2048
MODELS: list[str | None] = [*ADAPTER_RULES, None]
# Every scenario's jobs belong to two tenants of unequal weights (and a few to none), so
# that the fair order runs under every breakage: nothing lost, nothing twice, all the same.
TENANTS: list[str | None] = ["acme", "globex", None]
TENANT_WEIGHTS = "acme=2,globex=1"


@dataclass
class ChaosApp(LiveApp):
    """A deployed application the chaos tests break, and the pool of inputs it is exact on."""

    base_url: str = ""
    pool: list[str] = field(default_factory=list)
    redis_server: EmbeddedRedis | None = None

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.base_url + self.settings.http_route_prefix

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def submit(self, count: int, seed: int) -> dict[str, str]:
        """``count`` greedy jobs over every adapter and the base model, of two tenants:
        id -> expected text."""
        rng = random.Random(seed)
        picks = [(rng.choice(MODELS), rng.choice(self.pool)) for _ in range(count)]
        jobs = [
            {
                "adapter": model,
                "prompt": text,
                "tenant": rng.choice(TENANTS),
                "params": {"max_new_tokens": MAX_NEW_TOKENS},
            }
            for model, text in picks
        ]
        with self.producer() as producer:
            ids = producer.submit_many(jobs)
        return {
            job_id: expected_output(model, text)
            for job_id, (model, text) in zip(ids, picks, strict=True)
        }

    def under_way(self, seed: int) -> tuple[dict[str, str], int]:
        """Submit the scenario's JOBS and return once they are well under way: the
        expected texts, and how many jobs were still to end at that moment."""
        expected = self.submit(JOBS, seed=seed)
        self.wait_finished(list(expected), STARTED_BEFORE_BREAK)
        left = JOBS - self.finished(list(expected))
        assert left >= LEFT_AT_BREAK, f"only {left} jobs left to break things under"
        return expected, left

    def finished(self, ids: list[str]) -> int:
        """How many of ``ids`` have a final record now."""
        client = self.client()
        try:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(self.keys.job(job_id), "status")
            statuses = pipe.execute()
        finally:
            client.close()
        return sum(s in (b"succeeded", b"failed", b"cancelled", b"expired") for s in statuses)

    def wait_finished(self, ids: list[str], count: int, timeout_s: float = 300.0) -> float:
        """Seconds until at least ``count`` of ``ids`` are final."""
        started = time.monotonic()
        while self.finished(ids) < count:
            if time.monotonic() - started > timeout_s:
                done = self.finished(ids)
                raise AssertionError(f"{done} of {count} jobs final after {timeout_s}s")
            time.sleep(0.1)
        return time.monotonic() - started

    def model_pids(self) -> dict[str, int]:
        """Process id of each LoRAModel replica."""
        return {replica: int(s["pid"]) for replica, s in self.model_stats().items()}

    def consumer_pids(self) -> dict[str, int]:
        """Process id of each JobConsumer replica, by consumer name."""
        return {name: int(s["pid"]) for name, s in self._consumer_stats().items()}

    def consumer_errors(self) -> int:
        """Jobs the consumers could not complete and left pending (their ``errors``)."""
        return sum(int(s["errors"]) for s in self._consumer_stats().values())

    def _consumer_stats(self) -> dict[str, dict[str, Any]]:
        count = self.settings.num_consumer_replicas
        return _run(launch.replica_stats(self.running.consumer, count, key="consumer"))

    def wait_replaced(
        self,
        pids: Callable[[], dict[str, int]],
        count: int,
        dead: int,
        timeout_s: float = HEALTHY_TIMEOUT_S,
    ) -> float:
        """Seconds until ``count`` replicas answer ``pids()``, none of them process ``dead``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            try:
                found = pids()
                if len(found) == count and dead not in found.values():
                    return self.wait_healthy() + time.monotonic() - started
            except Exception:  # a call routed to the dead replica, before Serve noticed
                pass
            time.sleep(0.25)
        raise AssertionError(f"the replica of process {dead} was not replaced")

    def wait_healthy(self, timeout_s: float = HEALTHY_TIMEOUT_S) -> float:
        """Seconds until every model and consumer replica runs again."""
        started = time.monotonic()
        wanted = {
            MODEL_DEPLOYMENT: self.settings.num_model_replicas,
            CONSUMER_DEPLOYMENT: self.settings.num_consumer_replicas,
        }
        while True:
            app = serve.status().applications.get(self.settings.app_name)
            states = app.deployments if app else {}
            if all(
                name in states
                and states[name].status == "HEALTHY"
                and states[name].replica_states.get("RUNNING", 0) == count
                for name, count in wanted.items()
            ):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"not healthy after {timeout_s}s: {states}")
            time.sleep(0.25)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to a replica's process (the replicas run on this machine)."""
    os.kill(pid, sig)


def chaos_settings(redis_url: str, name: str, **overrides: Any) -> WorkerSettings:
    """Two model and two consumer replicas, short leases; default retries and attempts."""
    values: dict[str, Any] = {
        "app_name": name,
        "http_route_prefix": f"/{name}",
        "num_model_replicas": 2,
        "num_consumer_replicas": 2,
        "max_adapters_per_replica": 5,
        "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
        "lease_renew_s": LEASE_RENEW_S,
        "max_new_tokens": LONG_TOKENS,
        # Small enough that both consumers hold a full window under the 300 jobs.
        "schedule_window": CHAOS_WINDOW,
        "tenant_weights": TENANT_WEIGHTS,
        **overrides,
    }
    return e2e_settings(redis_url, **values)


def deploy_chaos_app(
    base_url: str, settings: WorkerSettings, redis_server: EmbeddedRedis | None = None
) -> ChaosApp:
    running = launch.deploy(settings)
    redis_url = running.settings.effective_redis_url
    app = ChaosApp(running, redis_url, base_url=base_url, redis_server=redis_server)
    app.pool = prompts_right_on_every_model(running.model, size=30)
    return app


# The app the scenarios of this folder's modules share (deploying it and checking its
# pool of inputs takes tens of seconds on two cores); see pytest_runtest_teardown.
_SHARED: list[ChaosApp] = []


@pytest.fixture
def chaos_app(ray_serve: str, redis_url: str) -> ChaosApp:
    """The application on the session's Redis, deployed once for this folder's scenarios.

    Not a package or session fixture: without an ``__init__.py`` pytest would keep it
    for the whole session, and the app's CPUs from later tests.
    """
    if not _SHARED:
        _SHARED.append(deploy_chaos_app(ray_serve, chaos_settings(redis_url, "chaos")))
    return _SHARED[0]


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After this folder's last test the shared app goes."""
    if _SHARED and (nextitem is None or nextitem.path.parent != item.path.parent):
        app = _SHARED.pop()
        launch.shutdown(app.running)
        delete_prefix(app.redis_url, app.settings.prefix)
