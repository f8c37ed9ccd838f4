"""Adapters registered at run time: the values of ``{P}:adapters`` (name -> JSON).

An operator (``loraq adapters add``, or any Redis client with ``HSET``) names a folder on
the model workers' machines; the workers use it only when it lies under one of their
configured adapter roots (``LORAQ_ADAPTER_DIR``, the folders of ``LORAQ_ADAPTERS``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from schemas import codec
from schemas.jobs import ADAPTER_NAME_PATTERN
from schemas.validation import describe

MAX_PATH_CHARS = 4096
_NAME = re.compile(ADAPTER_NAME_PATTERN)


def _absolute(path: str) -> str:
    # Workers resolve the folder on their own machine: a relative path would depend on
    # the directory each worker was started in.
    if not path.startswith("/"):
        raise ValueError("must be an absolute path (it is opened on the model workers)")
    if "\x00" in path:
        raise ValueError("must not contain NUL")
    return path


class AdapterRegistration(BaseModel):
    """One adapter registered at run time: the folder that holds its PEFT files."""

    path: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PATH_CHARS,
            description="Absolute path of the adapter's PEFT folder on the model workers.",
            # The validator below says why in words; the schema carries the same rule.
            json_schema_extra={"pattern": "^/[^\\u0000]*$"},
        ),
        AfterValidator(_absolute),
    ]


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
    """One field of ``{P}:adapters``: its folder, or why the field is unusable."""

    name: str
    path: str | None
    problem: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """As a JSON-ready dict."""
        return {"name": self.name, "path": self.path, "problem": self.problem}

    def line(self) -> str:
        """One line of text."""
        return (
            f"{self.name}  {self.path}"
            if self.problem is None
            else f"{self.name}  ({self.problem})"
        )


def read_registrations(fields: Mapping[Any, Any]) -> list[Registered]:
    """The fields of an ``HGETALL {P}:adapters`` reply, sorted by name; a bad name or
    value is kept with its problem and no path."""
    found = []
    for name, value in sorted(codec.decode_fields(fields).items()):
        try:
            found.append(Registered(check_adapter_name(name), parse_registration(value).path))
        except InvalidRegistration as exc:
            found.append(Registered(name, None, str(exc)))
    return found
