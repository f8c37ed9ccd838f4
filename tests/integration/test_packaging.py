"""A plain `pip install .` gives a producer without torch or Ray."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plain_install_has_no_torch_and_no_ray(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # pip's cache on: what `make install` just downloaded is not fetched again (the
    # question here is what a plain install pulls in, not the download).
    subprocess.run(
        [py, "-m", "pip", "install", "-q", str(REPO)],
        check=True,
        timeout=540,
        cwd=tmp_path,
    )
    listed = subprocess.run(
        [py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert "loraq" in names
    assert not names & {"torch", "ray", "transformers", "peft", "bitsandbytes"}, names
    subprocess.run(
        [py, "-c", "import producer, schemas; from producer.settings import ClientSettings"],
        check=True,
        cwd=tmp_path,
    )
