"""Reading a JSON Lines file of jobs: each line checked on its own, bad ones reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from producer.errors import JobValidationError
from producer.submission import prepare_job
from schemas.jobs import Job


@dataclass
class JobFile:
    """The valid jobs of a file (ids assigned) and the problems of the other lines."""

    jobs: list[Job] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


def read_job_lines(lines: Iterable[str]) -> JobFile:
    """Parse one job object per line (blank lines skipped); a bad line never stops the rest.

    Problems are ``(line number from 1, message)``; messages name the field and the bound.
    """
    out = JobFile()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            out.problems.append((number, f"not valid JSON ({exc})"))
            continue
        if not isinstance(data, dict):
            out.problems.append((number, f"expected a JSON object, got {type(data).__name__}"))
            continue
        try:
            out.jobs.append(prepare_job(data))
        except JobValidationError as exc:
            out.problems.append((number, str(exc)))
    return out
