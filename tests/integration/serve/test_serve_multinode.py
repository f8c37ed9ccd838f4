"""The application on a two-node Ray cluster: one model replica per node, both serve jobs.

The cluster runs in a process of its own (``multinode_run.py``): this pytest process
already holds a Ray. That process and everything it starts share a session of their
own, so whatever outlives it (a raylet, a GCS, a worker) is found, stopped and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import DEMO_KIT

RUN_WITHIN_S = 240
STOP_WITHIN_S = 60


def session_processes(session_id: int) -> dict[int, str]:
    """Live processes (pid -> name) of the session ``session_id``, read from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
            if os.getsid(int(entry)) != session_id:
                continue
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # "pid (name) state ...": the name may hold spaces and parentheses.
        name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        if state != "Z":
            found[int(entry)] = name
    return found


def stop_leftovers(session_id: int, grace_s: float = 20.0) -> list[str]:
    """Wait ``grace_s`` for the session to end, then kill what remains; their names."""
    deadline = time.monotonic() + grace_s
    while (left := session_processes(session_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(left.values())


def run_cluster(redis_url: str, prefix: str, temp_dir: str) -> subprocess.CompletedProcess[str]:
    """``multinode_run.py`` to its end, or stopped (its process group) past the limit."""
    command = [
        sys.executable,
        "-m",
        "tests.integration.serve.multinode_run",
        redis_url,
        prefix,
        temp_dir,
    ]
    # Not this process's Ray: its address, nor the token mode its ray.init turned on (read
    # when the script imports ray; the loopback cluster runs without tokens).
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**env, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=RUN_WITHIN_S)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the `ray start --block` processes then stop their nodes.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        err += f"\n(stopped after {RUN_WITHIN_S}s)"
    finally:
        # Whatever happened, nothing of the cluster may stay behind.
        leftovers = stop_leftovers(process.pid)
    if leftovers:
        err += f"\n(processes of the cluster outlived it, killed: {leftovers})"
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.ray  # a Ray of its own
@pytest.mark.slow
@pytest.mark.timeout(RUN_WITHIN_S + STOP_WITHIN_S + 60)
def test_two_nodes_with_a_model_replica_each_both_serve_jobs(redis_url: str, prefix: str) -> None:
    if not (DEMO_KIT / "config.json").exists():
        pytest.skip(f"the demo kit is missing at {DEMO_KIT} (python -m demo.build)")
    # Short: Ray's socket paths under it must stay within the 107 bytes of a Unix socket.
    temp_dir = tempfile.mkdtemp(prefix="lq-", dir="/tmp")
    started = time.monotonic()
    try:
        run = run_cluster(redis_url, prefix, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    assert "outlived" not in run.stderr, run.stderr[-1000:]
    report = json.loads(lines[-1])
    print(
        f"\nmulti-node: {len(report['nodes'])} nodes up in {report['cluster_up_s']}s, app "
        f"deployed at {report['deployed_s']}s, {report['jobs']} jobs done at "
        f"{report['total_s']}s (process {time.monotonic() - started:.1f}s); jobs per node "
        f"{sorted(report['jobs_per_node'].values())}"
    )
    assert len(report["nodes"]) == 2
    assert report["wrong"] == []
    # One model replica on each node, and each of them served jobs.
    assert sorted(report["replica_nodes"].values()) == sorted(report["nodes"])
    assert sorted(report["jobs_per_node"]) == sorted(report["nodes"])
    assert sum(report["jobs_per_node"].values()) == report["jobs"]
