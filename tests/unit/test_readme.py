"""The README documents every setting, with its default, in exactly one of its two tables:
what an operator sets, and tuning that keeps its defaults."""

from __future__ import annotations

import re
from pathlib import Path

from producer.settings import GatewaySettings
from workers.settings import WorkerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
OPERATOR = "### Operator settings"
TUNING = "### Tuning (keep the defaults)"
ROW = re.compile(r"^\| `(LORAQ_[A-Z0-9_]+)` \|", re.M)


def table_after(heading: str) -> list[str]:
    """The variables of the first table after ``heading``, in order."""
    section = README.split(f"\n{heading}\n", 1)[1]
    table = re.match(r"\s*((?:\|.*\n?)+)", section)
    assert table, f"no table under {heading}"
    return ROW.findall(table.group(1))


def settings() -> set[str]:
    fields = {*WorkerSettings.model_fields, *GatewaySettings.model_fields}
    return {f"LORAQ_{name.upper()}" for name in fields}


def test_every_setting_is_in_exactly_one_of_the_two_tables() -> None:
    operator, tuning = table_after(OPERATOR), table_after(TUNING)
    rows = operator + tuning
    assert sorted(rows) == sorted(set(rows)), "a setting is listed twice"
    assert not settings() - set(rows), f"README lacks {sorted(settings() - set(rows))}"
    assert not set(rows) - settings(), f"README lists unknown {sorted(set(rows) - settings())}"
