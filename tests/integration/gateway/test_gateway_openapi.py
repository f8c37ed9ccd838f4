"""A property-based run of the gateway's own OpenAPI document against the live server.

Schemathesis generates valid and invalid requests for every operation and checks that
none gets a 5xx, and that every response has a documented status, content type and schema.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.gateway.conftest import GatewayApp

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 30
RUN_TIMEOUT_S = 240


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    gateway: GatewayApp, tmp_path: Path
) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("schemathesis is not installed")
    document = gateway.request("GET", "/openapi.json").json()
    assert {"/v1/generate", "/v1/jobs", "/v1/completions", "/healthz"} <= set(document["paths"])
    started = time.monotonic()
    command = [
        binary, "run", f"{gateway.url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--phases", "examples,coverage,fuzzing",
        "--workers", "1",
        "--seed", "20240601",
        "--request-timeout", "60",
        "--generation-database", "none",
        "--no-color",
    ]  # fmt: skip
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=tmp_path,
    )
    print(out.stdout[-4000:])
    print(f"schemathesis took {time.monotonic() - started:.0f}s")
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]
