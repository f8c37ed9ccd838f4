"""Turn what a client sent into a :class:`Job`, or into one line that says what is wrong."""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.jobs import Job

# How much of a client's text an error message quotes.
MAX_QUOTED_CHARS = 64


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


def clip(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` quoted (``repr``) when short, else its first ``limit`` characters quoted and
    the whole length: an error message never echoes much of what a client sent."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen:
            raise InvalidJob(f"duplicate key {clip(name)} in a JSON object; send each key once")
        seen[name] = value
    return seen


def check_unique_keys(text: str | bytes) -> None:
    """Raise :class:`InvalidJob` when a JSON object in ``text`` (already known to be valid
    JSON) repeats a key: parsers keep the first or the last, so the job would depend on
    which parser read it. orjson, which decodes the job, cannot tell."""
    try:
        json.loads(text, object_pairs_hook=_refuse_repeats)
    except RecursionError:
        # orjson takes 1024 levels, this parser a few less: no job is anywhere near.
        raise InvalidJob("JSON nested too deeply") from None


def load_job_json(payload: str | bytes) -> Any:
    """Decode a job's JSON text, refusing invalid JSON and repeated keys (:class:`InvalidJob`)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidJob(f"not valid JSON ({exc})") from None
    check_unique_keys(payload)
    return data


def parse_job(payload: str | bytes) -> Job:
    """Decode and validate the ``job`` field of a stream entry; raises :class:`InvalidJob`."""
    try:
        data = load_job_json(payload)
    except InvalidJob as exc:
        raise InvalidJob(f"job: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidJob(f"job: expected a JSON object, got {type(data).__name__}")
    return validate_job(data)
