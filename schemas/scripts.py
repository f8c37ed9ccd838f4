"""The queue's Lua scripts: one ``.lua`` file each under ``schemas/lua/``, for producers
and workers alike (package data of ``schemas``, so a producer-only install has them).

Every script runs behind the same prelude: ``statuses.lua``, the state machine of
:mod:`schemas.records` written as Lua (generated here, checked in, a test fails when it
is stale), then the shared helpers of ``common.lua``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from schemas.records import TRANSITIONS, JobStatus

LUA_DIR = Path(__file__).resolve().parent / "lua"
STATUSES_LUA = LUA_DIR / "statuses.lua"
PRELUDE = ("statuses", "common")


@cache
def script_source(name: str) -> str:
    """The text of ``lua/{name}.lua`` behind the prelude, ready to register."""
    return "\n".join((LUA_DIR / f"{part}.lua").read_text() for part in (*PRELUDE, name))


def statuses_lua() -> str:
    """``statuses.lua``: :data:`~schemas.records.TRANSITIONS` as a Lua table and test."""
    # In JobStatus's order: the file must not change with Python's hash seed.
    rows = [f"  [''] = {_lua_set(TRANSITIONS[None])},"]
    rows += [f"  {status.value} = {_lua_set(TRANSITIONS[status])}," for status in JobStatus]
    return "\n".join(
        [
            "-- The job state machine: which status may follow which. Generated from",
            "-- schemas/records.py (TRANSITIONS) by `python -m schemas.export`: edit that,",
            "-- not this file. A test runs the scripts against it.",
            "-- NEXT[''] is a job with no record yet (pushed with plain XADD).",
            "local NEXT = {",
            *rows,
            "}",
            "",
            "-- Whether a record in status `current` (false: none) may move to `new`. A status",
            "-- the machine does not know (a record written by hand) counts as none.",
            "local function can_move(current, new)",
            "  return (NEXT[current] or NEXT[''])[new] == true",
            "end",
            "",
        ]
    )


def _lua_set(statuses: frozenset[JobStatus]) -> str:
    return (
        "{"
        + ", ".join(f"{status.value} = true" for status in JobStatus if status in statuses)
        + "}"
    )
