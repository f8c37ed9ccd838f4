"""The application on a Ray cluster of two nodes on this machine, one model replica per node.

Two ``ray start --block`` processes on loopback (a head and a worker node, a Ray temp
dir of their own, every port free-picked), the app deployed with
``max_model_replicas_per_node=1``, jobs of every demo adapter through the queue. Prints
one JSON line; exits 0 when every job gave its adapter's output and both nodes served
jobs. ``test_serve_multinode.py`` runs it in a process of its own, because a pytest
process holds one Ray already.

    python -m tests.integration.serve.multinode_run REDIS_URL PREFIX RAY_TEMP_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray import serve

from demo.tasks import expected_output
from producer import Producer
from producer.embedded import free_port
from schemas import JobStatus
from tests.integration.serve.conftest import (
    MAX_NEW_TOKENS,
    e2e_settings,
    prompts_right_on_every_model,
)
from tests.integration.serve.test_serve_jobs import job_plan
from workers import launch

JOBS = 60
CPUS_PER_NODE = 2
NODES_UP_WITHIN_S = 60.0
START_TRIES = 3
RAY = str(Path(sys.executable).with_name("ray"))

T = TypeVar("T")


def ray_start(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """A ``ray start --block`` process, its output in ``log``: SIGTERM makes it stop every
    process of its node."""
    ports = {
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "metrics-export-port": free_port(),
    }
    command = [
        RAY,
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={CPUS_PER_NODE}",
        "--disable-usage-stats",
        *(f"--{name}={port}" for name, port in ports.items()),
        *args,
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a node's output, for an error message."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


@contextmanager
def two_nodes(temp_dir: str, started: float) -> Iterator[list[str]]:
    """A head and a worker node with this process's driver connected; yields the ids of
    the two nodes; disconnects and stops both at the end."""
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        address = start_head(temp_dir, nodes, started)
        progress(started, f"head node up at {address}")
        ray.init(address=address, log_to_driver=False)
        try:
            yield start_worker(address, temp_dir, nodes, started)
        finally:
            ray.shutdown()
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


def start_head(temp_dir: str, nodes: list[subprocess.Popen[bytes]], started: float) -> str:
    """Start the head node (into ``nodes``) and return its address once it is up."""
    log = Path(temp_dir) / "head.log"

    def start() -> str | None:
        port = free_port()
        head = ray_start(
            log,
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            # Also where `ray start` records the cluster's address: not /tmp/ray, so a
            # plain ray.init() elsewhere on the machine does not find this cluster.
            f"--temp-dir={temp_dir}",
        )
        nodes.append(head)
        return f"127.0.0.1:{port}" if head_is_up(head, temp_dir) else None

    return with_tries("ray start --head", start, nodes, log, started)


def head_is_up(head: subprocess.Popen[bytes], temp_dir: str) -> bool:
    """Wait for the head node: True once it is up, False if it exited first.

    `ray start` writes the cluster's address last. A worker node or a driver that comes
    earlier fails at once ("Timed out while waiting for GCS") when a loaded machine
    starts the head slowly.
    """
    address_file = Path(temp_dir) / "ray_current_cluster"
    deadline = time.monotonic() + NODES_UP_WITHIN_S
    while not address_file.exists():
        if head.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head node was not up within {NODES_UP_WITHIN_S}s")
        time.sleep(0.2)
    return True


def start_worker(
    address: str, temp_dir: str, nodes: list[subprocess.Popen[bytes]], started: float
) -> list[str]:
    """Start a worker node (into ``nodes``); the ids of the cluster's two alive nodes."""
    log = Path(temp_dir) / "worker.log"

    def start() -> list[str] | None:
        worker = ray_start(log, f"--address={address}")
        nodes.append(worker)
        deadline = time.monotonic() + NODES_UP_WITHIN_S
        while worker.poll() is None:
            alive = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
            if len(alive) == 2:
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker node was not up within {NODES_UP_WITHIN_S}s")
            time.sleep(0.5)
        return None

    return with_tries("ray start (worker)", start, nodes, log, started)


def with_tries(
    what: str,
    start: Callable[[], T | None],
    nodes: list[subprocess.Popen[bytes]],
    log: Path,
    started: float,
) -> T:
    """``start()`` until it gives a node that is up, at most ``START_TRIES`` times.

    Every port is picked free just before ``ray start``, yet another process (a Ray
    worker of the pytest session, say) may bind it first: the node then exits at once
    (``start()`` gives ``None``), and a try with new ports follows.
    """
    for attempt in range(1, START_TRIES + 1):
        found = start()
        if found is not None:
            return found
        progress(started, f"{what} exited with {nodes[-1].returncode} (try {attempt})")
    raise RuntimeError(f"{what} failed {START_TRIES} times:\n{log_tail(log)}")


def run_jobs(running: launch.Running) -> dict[str, Any]:
    """Jobs of every adapter through the queue; which node served each, and any wrong."""
    # Few direct calls at once (5 models x 12 inputs): below the replicas' max_ongoing_requests.
    prompts = prompts_right_on_every_model(running.model, size=12)
    plan = job_plan(prompts, JOBS, seed=11)
    with Producer.from_settings(running.settings) as producer:
        ids = producer.submit_many(
            [
                {"adapter": a, "prompt": p, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                for a, p in plan
            ]
        )
        records = producer.wait_many(ids, timeout=150)
        # Each model replica's heartbeat names its node.
        replica_nodes = {beat.replica: beat.node for beat in producer.stats().replicas}
    wrong = [
        (adapter, prompt, records[job_id].status.value)
        for job_id, (adapter, prompt) in zip(ids, plan, strict=True)
        if records[job_id].status is not JobStatus.SUCCEEDED
        or records[job_id].result is None
        or records[job_id].result.text != expected_output(adapter, prompt)  # type: ignore[union-attr]
    ]
    served = Counter(
        replica_nodes.get(record.result.replica or "", "unknown")
        for record in records.values()
        if record.result is not None
    )
    return {"replica_nodes": replica_nodes, "jobs_per_node": dict(served), "wrong": wrong}


def progress(started: float, what: str) -> None:
    """A line on stderr, so that a run stopped at the limit shows how far it got."""
    print(f"[{time.monotonic() - started:6.1f}s] {what}", file=sys.stderr, flush=True)


def main(redis_url: str, prefix: str, temp_dir: str) -> int:
    # A cluster of loopback nodes for one run: no token authentication (else `ray start`
    # turns it on when ~/.ray holds a token, and every process must find the same one).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    launch.allow_slow_proxy_start()  # inherited by the nodes' processes
    started = time.monotonic()
    report: dict[str, Any] = {"jobs": JOBS}
    with two_nodes(temp_dir, started) as nodes:
        report["nodes"] = nodes
        report["cluster_up_s"] = round(time.monotonic() - started, 1)
        progress(started, f"{len(nodes)} nodes alive")
        try:
            # Both nodes share this host's ports: one HTTP proxy, on the head.
            serve.start(
                http_options={"host": "127.0.0.1", "port": free_port(), "location": "HeadOnly"}
            )
            settings = e2e_settings(
                redis_url,
                prefix=prefix,
                app_name="multinode",
                num_model_replicas=2,
                max_model_replicas_per_node=1,
            )
            running = launch.deploy(settings)
            report["deployed_s"] = round(time.monotonic() - started, 1)
            progress(started, "app deployed")
            try:
                report.update(run_jobs(running))
            finally:
                launch.shutdown(running)
        finally:
            progress(started, "shutting down")
            serve.shutdown()  # type: ignore[no-untyped-call]
    report["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report))
    served_nodes = set(report["jobs_per_node"]) & set(report["nodes"])
    return 0 if not report["wrong"] and len(served_nodes) == 2 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
