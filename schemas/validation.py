"""Turn what a client sent into a :class:`Job`, or into one line that says what is wrong."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.jobs import Job, oversized, too_large_message

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


# The tokens of JSON text that say where keys are: strings, brackets, commas and colons.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]')


# Texts with at most this many brackets are checked by the standard library's C JSON
# scanner first: it recurses once per level, far below Python's limit.
_FAST_BRACKETS = 64


class _Repeated(Exception):
    """A key repeated somewhere: the scan below names the first, in reading order."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len({key for key, _ in pairs}) != len(pairs):
        raise _Repeated


def check_unique_keys(text: str | bytes) -> None:
    """Raise :class:`InvalidJob` when a JSON object in ``text`` (valid JSON: check that
    first) repeats a key: parsers keep the first or the last, so the job would depend on
    which parser read it, and orjson, which decodes the job, cannot tell.

    A scan of the tokens with a stack, not a recursive parser: its answer must not depend
    on how deep the caller's own stack is. A shallow text (nearly every job) is first
    read by the C scanner, which sees every pair of every object and is several times
    faster; it only says "no key repeated" (the scan names a repeated key, so that the
    message does not depend on the path), and a caller's stack too deep for it falls
    back to the scan.
    """
    if isinstance(text, bytes):
        text = text.decode()
    if text.count("{") + text.count("[") <= _FAST_BRACKETS:
        # A text the C scanner refuses (it is only asked once orjson read it) is scanned too.
        with contextlib.suppress(_Repeated, RecursionError, ValueError):
            json.loads(text, object_pairs_hook=_unique_pairs)
            return
    objects: list[set[str] | None] = []  # per open bracket: its keys, None for an array
    key_next = False
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token == "{" or token == "[":
            objects.append(set() if token == "{" else None)
            key_next = token == "{"
        elif token == "}" or token == "]":
            objects.pop()
            key_next = False
        elif token == ",":
            key_next = bool(objects) and objects[-1] is not None
        elif token == ":" or not key_next:
            key_next = False
        else:
            keys, key = objects[-1], json.loads(token)
            assert keys is not None
            if key in keys:
                raise InvalidJob(f"duplicate key {clip(key)} in a JSON object; send each key once")
            keys.add(key)
            key_next = False


def load_job_json(payload: str | bytes) -> Any:
    """Decode a job's JSON text, refusing invalid JSON and repeated keys (:class:`InvalidJob`)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidJob(f"not valid JSON ({exc})") from None
    check_unique_keys(payload)
    return data


def parse_job(payload: str | bytes) -> Job:
    """Decode and validate the ``job`` field of a stream entry; raises :class:`InvalidJob`.
    One over ``MAX_JOB_BYTES`` is refused before it is decoded."""
    size = oversized(payload)
    if size is not None:
        raise InvalidJob(too_large_message(size))
    try:
        data = load_job_json(payload)
    except InvalidJob as exc:
        raise InvalidJob(f"job: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidJob(f"job: expected a JSON object, got {type(data).__name__}")
    return validate_job(data)
