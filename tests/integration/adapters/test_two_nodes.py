"""Two Ray nodes, no adapter folder on either: jobs for 50 adapters that live only in
the S3 server answer right on both nodes, and each node downloads each adapter once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.adapters.conftest import DEMO_ADAPTERS, S3Server

DEMOS = sorted(path.name for path in DEMO_ADAPTERS.iterdir())


@pytest.mark.ray  # a Ray of its own
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_nodes_serve_s3_adapters_downloading_each_once_per_node(
    s3: S3Server, redis_url: str, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    names = {f"{demo}-{i:02d}": demo for i in range(50 // len(DEMOS) + 1) for demo in DEMOS}
    names = dict(list(names.items())[:50])
    for name, demo in names.items():
        s3.upload(bucket, f"adapters/{name}", DEMO_ADAPTERS / demo)
    script = Path(__file__).with_name("two_nodes.py")
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            redis_url,
            f"s3://{bucket}/adapters",
            json.dumps(names),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=REPO,
        # A Ray token left in ~/.ray by another run would turn token auth on, and the
        # second node, whose home differs, would not find it: off, as in the multinode test.
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    found = json.loads(lines[-1])
    print(f"\ntwo nodes: {found}")
    assert found["right"]
    replicas = list(found["replicas"].values())
    assert len(replicas) == 2 and all(r["served"] > 0 for r in replicas)  # both nodes
    # One replica per node, each node its own disk tier: every download made one entry
    # there (none twice), and no node downloaded more than the 50 adapters.
    assert all(count > 0 for count in found["homes"])
    assert sum(r["downloads"] for r in replicas) == sum(found["homes"])
    assert all(r["downloads"] <= len(names) for r in replicas)
