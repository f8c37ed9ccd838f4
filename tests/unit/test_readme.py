"""The README documents every setting, with its default."""

from __future__ import annotations

from pathlib import Path

from workers.settings import WorkerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [
        f"LORAQ_{name.upper()}"
        for name in WorkerSettings.model_fields
        if f"`LORAQ_{name.upper()}`" not in README
    ]
    assert not missing, f"README lacks {missing}"
