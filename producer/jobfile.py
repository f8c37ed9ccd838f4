"""Reading a JSON Lines file of jobs: each line checked on its own, bad ones reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from producer.errors import JobValidationError
from producer.submission import prepare_job
from schemas.jobs import Job
from schemas.validation import InvalidJob, load_job_json


@dataclass
class JobFile:
    """The valid jobs of a file (ids assigned) and the problems of the other lines."""

    jobs: list[Job] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


def read_job_lines(lines: Iterable[str | bytes]) -> JobFile:
    """Parse one job object per line (blank lines skipped); a bad line never stops the rest.

    Lines may be bytes (a file read as such): one that is not UTF-8 is a bad line like
    any other. Problems are ``(line number from 1, message)``; messages name the field
    and the bound.
    """
    out = JobFile()
    for number, line in enumerate(lines, start=1):
        problem = _add_line(out, line)
        if problem is not None:
            out.problems.append((number, problem))
    return out


def _add_line(out: JobFile, line: str | bytes) -> str | None:
    """Add the job on ``line`` to ``out``; what is wrong with the line, if anything."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"not UTF-8 text (byte {exc.start + 1} of the line)"
    if not line.strip():
        return None
    try:
        data = load_job_json(line)
    except InvalidJob as exc:
        return str(exc)
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    try:
        out.jobs.append(prepare_job(data))
    except JobValidationError as exc:
        return str(exc)
    return None
