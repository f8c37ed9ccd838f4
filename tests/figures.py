"""Figures a test prints in pytest's terminal summary (the chaos and failover tallies).

A test appends a record (anything with ``line()``) to the list of its section; the root
conftest moves what was appended into the test's report, and prints the sections at the
end of the run. Through the report, because with pytest-xdist the test runs in a worker
process while the summary is written by the controller, which sees only reports.
"""

from __future__ import annotations

from typing import Protocol

# The name the lines travel under in a report's user_properties.
PROPERTY = "loraq-figures"


class Figures(Protocol):
    """One scenario's figures."""

    def line(self) -> str:
        """The figures on one line."""


SECTIONS: dict[str, list[Figures]] = {}


def section(title: str) -> list[Figures]:
    """The list whose records are printed under ``title`` (one list per title)."""
    return SECTIONS.setdefault(title, [])


def take_lines() -> list[tuple[str, str]]:
    """(title, line) of every record appended since the last call, emptying the lists."""
    lines = [(title, record.line()) for title, records in SECTIONS.items() for record in records]
    for records in SECTIONS.values():
        records.clear()
    return lines
