"""The Batch API from a shell (curl and jq) and from ``loraq batch submit --wait``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from producer import cli
from tests.integration.gateway.batch_files import completions_file
from tests.integration.gateway.conftest import GatewayApp
from tests.terminal import Terminal

SCRIPT = Path(__file__).with_name("batch_curl.sh")
LINES = 24
BAR = "\u2501"  # what rich draws its bars with


def outputs_of(path: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["custom_id"]: line["response"]["body"]["choices"][0]["text"] for line in lines}


def assert_mostly_right(got: dict[str, str], expected: dict[str, str]) -> None:
    # The kit is 98.5-100 % exact per task (see test_gateway_batches for the exact check).
    assert set(got) == set(expected)
    assert sum(got[k] == expected[k] for k in got) >= len(got) - 2, (got, expected)


@pytest.mark.timeout(300)
def test_curl_runs_a_batch(gateway: GatewayApp, tmp_path: Path) -> None:
    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.skip("curl and jq are needed")
    batch = completions_file(gateway.settings.base_model_name, lines=LINES)
    (tmp_path / "in.jsonl").write_bytes(batch.content)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    run = subprocess.run(
        ["bash", str(SCRIPT), gateway.url, str(tmp_path / "in.jsonl"), str(out), str(err)],
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary == {
        "status": "completed",
        "request_counts": {"total": LINES + 1, "completed": LINES, "failed": 1},
    }
    assert_mostly_right(outputs_of(out), batch.expected)
    assert len(err.read_text().splitlines()) == 1


@pytest.mark.timeout(300)
def test_loraq_batch_submit_wait(gateway: GatewayApp, tmp_path: Path) -> None:
    batch = completions_file(gateway.settings.base_model_name, lines=LINES, bad=False)
    (tmp_path / "in.jsonl").write_bytes(batch.content)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "LORAQ_GATEWAY_URL": gateway.url}
    command = [sys.executable, "-m", "producer.cli", "batch", "submit", str(tmp_path / "in.jsonl")]
    run = subprocess.run(
        [*command, "--wait", "--out", str(out)],
        capture_output=True, text=True, timeout=280, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert BAR not in run.stderr and "\x1b" not in run.stderr  # no bar into a pipe
    batch_id, summary = run.stdout.splitlines()[0], run.stdout.splitlines()[-1]
    assert (
        batch_id.startswith("batch_") and f"completed\ttotal={LINES} completed={LINES}" in summary
    )
    assert_mostly_right(outputs_of(out), batch.expected)
    status = subprocess.run(
        [sys.executable, "-m", "producer.cli", "batch", "status", batch_id, "--json"],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    assert json.loads(status.stdout)["status"] == "completed"
    listed = subprocess.run(
        [sys.executable, "-m", "producer.cli", "batch", "list"],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    assert batch_id in listed.stdout


@pytest.mark.timeout(120)
def test_submit_wait_draws_a_progress_bar_on_a_terminal_and_keeps_stdout_plain(
    gateway: GatewayApp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    batch = completions_file(gateway.settings.base_model_name, lines=8, bad=False)
    (tmp_path / "in.jsonl").write_bytes(batch.content)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("LORAQ_GATEWAY_URL", gateway.url)
    assert cli.main(["batch", "submit", str(tmp_path / "in.jsonl"), "--wait"]) == 0
    out = capsys.readouterr().out
    batch_id, summary = out.splitlines()  # what a script reads: the id, then the summary
    assert batch_id.startswith("batch_") and summary.startswith(f"{batch_id}\tcompleted\t")
    assert "\x1b" not in out and BAR not in out
    drawn = terminal.getvalue()
    assert f"batch {batch_id}" in drawn and BAR in drawn and "100%" in drawn
