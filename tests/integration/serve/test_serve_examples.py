"""The clients in examples/ (Node.js, shell) against the live application."""

from __future__ import annotations

import os
import shutil
import subprocess

import orjson
import pytest

from demo.tasks import rot13, title
from tests.conftest import REPO
from tests.integration.serve.conftest import LiveApp

NODE_DIR = REPO / "examples" / "node"
SHELL_CLIENT = REPO / "examples" / "shell" / "loraq.sh"


def client_env(app: LiveApp) -> dict[str, str]:
    return {**os.environ, "LORAQ_REDIS_URL": app.redis_url, "LORAQ_PREFIX": app.settings.prefix}


def test_the_shell_client_submits_waits_and_prints_the_result(
    live_app: LiveApp, kit_prompts: list[str]
) -> None:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    out = subprocess.run(
        ["bash", str(SHELL_CLIENT), "rot13", kit_prompts[0], "16"],
        env=client_env(live_app),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines()[1:])
    assert lines["status"] == "succeeded"
    assert orjson.loads(lines["result"])["text"] == rot13(kit_prompts[0])


def test_the_node_client_submits_streams_and_prints_the_record(
    live_app: LiveApp, kit_prompts: list[str]
) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js (node and npm) is not installed")
    if not (NODE_DIR / "node_modules" / "redis").is_dir():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
        )
    out = subprocess.run(
        [node, "loraq.mjs", "title", kit_prompts[1], "16"],
        cwd=NODE_DIR,
        env=client_env(live_app),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out
    record = orjson.loads(out.stdout)
    assert record["status"] == "succeeded"
    assert record["result"]["text"] == title(kit_prompts[1])
    assert title(kit_prompts[1]) in out.stderr  # the chunks, printed as they came
