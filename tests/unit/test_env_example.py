""".env.example lists every setting, as `python -m workers.env_example` writes it."""

from __future__ import annotations

import re

import pytest

from workers.env_example import ENV_EXAMPLE, render
from workers.settings import WorkerSettings

REGENERATE = "run `python -m workers.env_example`"


def test_every_setting_is_in_env_example() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = set(re.findall(r"^# LORAQ_(\w+)=", text, flags=re.MULTILINE))
    missing = {name.upper() for name in WorkerSettings.model_fields} - listed
    assert not missing, f".env.example lacks {sorted(missing)}: {REGENERATE}"
    assert text == render(), f"stale .env.example: {REGENERATE}"


def test_uncommenting_a_line_keeps_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value written parses back to its field's default."""
    defaults = WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    lines = re.findall(r"^# LORAQ_(\w+)=(.+)$", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert len(lines) > len(WorkerSettings.model_fields) // 2
    for name, value in lines:
        monkeypatch.setenv(f"LORAQ_{name}", value)
    assert WorkerSettings(_env_file=None) == defaults  # type: ignore[call-arg]
