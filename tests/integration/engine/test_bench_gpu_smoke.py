"""``bench/gpu.py --smoke``: the GPU check's own code path on a tiny shape, real engine.

It runs in a fresh interpreter in which Ray, Redis, vLLM and the HTTP stack cannot be
imported, as on the GPU machine (torch tries ``redis`` itself and copes without it): a
module of ours that pulled one in would fail here before it failed on a lent device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ABSENT = ("ray", "vllm", "fastapi", "starlette", "uvicorn")
RUN = f"""
import sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is not on the GPU machine")
        return None

sys.meta_path.insert(0, Absent())
from bench.gpu import main
main(sys.argv[1:])
"""


@pytest.mark.timeout(240)
def test_smoke_run_writes_every_variant(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["errors"] == [] and report["skipped"] == []
    assert report["config"]["smoke"] and report["config"]["device"] == "cpu"
    assert report["models"]["smoke"]["weight_bytes"] > 0
    seen = {(run["variant"], run["rows"], run["mode"]) for run in report["runs"]}
    for variant in ("bf16", "4bit"):
        for rows in (2, 4):
            assert {(variant, rows, "mixed"), (variant, rows, "base")} <= seen
    assert ("one_at_a_time", 1, "one_at_a_time") in seen
    plan = report["config"]
    for run in report["runs"]:
        rows = run["rows"]
        requests = plan["one_at_a_time_requests"] if rows == 1 else rows
        # Every row ran its full length (the end-of-sequence token is never greedy's pick).
        assert run["tokens"] == requests * plan["new_tokens"], run
        assert run["tokens_per_s"] > 0 and run["step_ms"] > 0 and run["floor_ms"] > 0
        assert run["step_over_floor"] == pytest.approx(run["step_ms"] / run["floor_ms"])
    mixed = [run for run in report["runs"] if run["mode"] == "mixed"]
    # Mixed runs put rows of several adapters into one pass.
    assert all(run["max_adapters_in_pass"] > 1 for run in mixed)
    ratios = {(r["variant"], r["rows"]) for r in report["ratios"]}
    assert ratios == {(v, rows) for v in ("bf16", "4bit") for rows in (2, 4)}
    assert all(
        r["mixed_over_base"] > 0 and r["mixed_over_one_at_a_time"] > 0 for r in report["ratios"]
    )
    markdown = (tmp_path / "gpu.md").read_text()
    assert "| smoke | bf16 | 4 | mixed |" in markdown
