"""Adapters registered at run time: the values of ``{P}:adapters`` (name -> JSON).

An operator (``loraq adapters add``, or any Redis client with ``HSET``) names either a
folder on the model replicas' machines (``{"path": …}``), which the workers use only when
it lies under one of their configured adapter roots (``LORAQ_ADAPTER_DIR``, the folders
of ``LORAQ_ADAPTERS``), or a remote location (``{"uri": "s3://…"}``, protocol v1.3): an
object-store folder, a Hub repository or an HTTP folder, which the workers download
into their node's disk cache.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

from schemas import codec
from schemas.adapter_uris import MAX_URI_CHARS, InvalidUri, parse_adapter_uri
from schemas.jobs import ADAPTER_NAME_PATTERN
from schemas.validation import describe

MAX_PATH_CHARS = 4096
_NAME = re.compile(ADAPTER_NAME_PATTERN)


def _absolute(path: str) -> str:
    # Workers resolve the folder on their own machine: a relative path would depend on
    # the directory each worker was started in.
    if not path.startswith("/"):
        raise ValueError("must be an absolute path (it is opened on the model replicas' machines)")
    if "\x00" in path:
        raise ValueError("must not contain NUL")
    return path


def _checked_uri(uri: str) -> str:
    try:
        parse_adapter_uri(uri)
    except InvalidUri as exc:
        raise ValueError(str(exc)) from None
    return uri


class AdapterRegistration(BaseModel):
    """One adapter registered at run time: the folder or the remote location of its PEFT
    files (exactly one of ``path`` and ``uri``)."""

    path: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_PATH_CHARS,
            description=(
                "Absolute path of the adapter's PEFT folder on the model replicas' machines."
            ),
            # The validator below says why in words; the schema carries the same rule.
            json_schema_extra={"pattern": "^/[^\\u0000]*$"},
        ),
        AfterValidator(lambda path: None if path is None else _absolute(path)),
    ] = None
    uri: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_URI_CHARS,
            description="Remote folder of the adapter's PEFT files: s3://bucket/prefix, "
            "gs://…, az://…, hf://org/repo[@revision][/subfolder], http(s)://host/folder. "
            "No credentials: the workers take them from their environment.",
        ),
        AfterValidator(lambda uri: None if uri is None else _checked_uri(uri)),
    ] = None

    @model_validator(mode="after")
    def _one_location(self) -> AdapterRegistration:
        if (self.path is None) == (self.uri is None):
            raise ValueError("give exactly one of path (a worker folder) and uri")
        return self

    @property
    def location(self) -> str:
        """The path or the URI, whichever it has."""
        return self.path or self.uri or ""


class InvalidRegistration(ValueError):
    """A registration that names no usable adapter; the message says why."""


def check_adapter_name(name: str) -> str:
    """``name`` when it is a well-formed adapter name, else :class:`InvalidRegistration`."""
    if not _NAME.fullmatch(name):
        raise InvalidRegistration(
            f"adapter name {name!r} is invalid: use 1-128 of [A-Za-z0-9._-], starting with "
            "a letter or digit (no path separators, no '..')"
        )
    return name


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or root in path.parents


def adapter_roots(adapter_dir: str | None, adapters: Mapping[str, str]) -> list[Path]:
    """The configured adapter roots, resolved: the scanned folder, then each mapped folder."""
    folders = ([adapter_dir] if adapter_dir else []) + list(adapters.values())
    return [Path(folder).resolve() for folder in folders]


def check_within_roots(path: str, roots: Sequence[Path]) -> Path:
    """``path`` resolved (symlinks followed) when it lies under one of ``roots``, else
    :class:`InvalidRegistration`: what the workers would refuse is refused up front."""
    resolved = Path(path).resolve()
    if not any(is_within(resolved, root) for root in roots):
        listed = ", ".join(str(root) for root in roots) or "none configured"
        raise InvalidRegistration(
            f"folder {path!r} is outside the configured adapter roots ({listed}): the "
            "workers would refuse it; set LORAQ_ADAPTER_DIR or LORAQ_ADAPTERS"
        )
    return resolved


def parse_registration(raw: str | bytes) -> AdapterRegistration:
    """The registration stored in ``{P}:adapters``; :class:`InvalidRegistration` when bad."""
    try:
        return AdapterRegistration.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRegistration(f"invalid registration: {describe(exc, 'value')}") from None


@dataclass(frozen=True)
class Registered:
    """One field of ``{P}:adapters``: its folder or URI, or why the field is unusable."""

    name: str
    path: str | None
    problem: str | None = None
    uri: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """As a JSON-ready dict."""
        return {"name": self.name, "path": self.path, "uri": self.uri, "problem": self.problem}

    def line(self) -> str:
        """One line of text."""
        return (
            f"{self.name}  {self.path or self.uri}"
            if self.problem is None
            else f"{self.name}  ({self.problem})"
        )


def read_registrations(fields: Mapping[Any, Any]) -> list[Registered]:
    """The fields of an ``HGETALL {P}:adapters`` reply, sorted by name; a bad name or
    value is kept with its problem and no path."""
    found = []
    for name, value in sorted(codec.decode_fields(fields).items()):
        try:
            checked = check_adapter_name(name)  # the name's problem first
            registration = parse_registration(value)
            found.append(Registered(checked, registration.path, uri=registration.uri))
        except InvalidRegistration as exc:
            found.append(Registered(name, None, str(exc)))
    return found
