"""Turn what a client sent into a :class:`Job`, or into one line that says what is wrong."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from schemas.jobs import Job


class InvalidJob(ValueError):
    """A payload that is not a valid v1 job; the message names each field and problem."""


def describe(error: ValidationError, whole: str = "job") -> str:
    """``field: problem; field: problem`` for every error, bounds included (``whole``
    names a problem of the value itself)."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or whole
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def validate_job(data: Any) -> Job:
    """Validate decoded JSON (or keyword data) as a job; raises :class:`InvalidJob`."""
    try:
        return Job.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(describe(exc)) from None


def parse_job(payload: str | bytes) -> Job:
    """Decode and validate the ``job`` field of a stream entry; raises :class:`InvalidJob`."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidJob(f"job: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidJob(f"job: expected a JSON object, got {type(data).__name__}")
    return validate_job(data)
