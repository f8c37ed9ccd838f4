"""``{P}:adapters``: register, list and remove adapters at run time (operator verbs).

A registration binds a name to a folder on the model workers' machines for good: the
workers load it on first use and keep its weights, so registering a name again with
another folder is refused. A new version of an adapter gets a new name.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from pydantic import ValidationError

from schemas import codec
from schemas.adapters import (
    AdapterRegistration,
    InvalidRegistration,
    check_adapter_name,
    parse_registration,
)
from schemas.keys import Keys
from schemas.validation import describe


@dataclass(frozen=True)
class Registered:
    """One field of ``{P}:adapters``: its folder, or why its value is unusable."""

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


class AdapterRegistrations:
    """The run-time adapter registrations of one prefix, over a sync Redis client."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def add(self, name: str, path: str) -> bool:
        """Register ``name`` at ``path``; ``False`` when it already was, to the same folder.

        Raises :class:`InvalidRegistration` for a bad name or path, or a name registered
        to another folder.
        """
        check_adapter_name(name)
        try:
            value = AdapterRegistration(path=path).model_dump_json()
        except ValidationError as exc:
            raise InvalidRegistration(describe(exc)) from None
        if self.client.hsetnx(self.keys.adapters, name, value):
            return True
        current = self.client.hget(self.keys.adapters, name)
        if current is not None and _path_of(current) == path:
            return False
        raise InvalidRegistration(
            f"adapter {name!r} is already registered to another folder: register the new "
            "version under a new name (replicas keep the weights they loaded for a name)"
        )

    def remove(self, name: str) -> bool:
        """Remove ``name``'s registration; whether there was one.

        Replicas that already loaded it keep serving it until they restart.
        """
        check_adapter_name(name)
        return bool(self.client.hdel(self.keys.adapters, name))

    def all(self) -> list[Registered]:
        """Every registration, sorted by name; unusable values say why."""
        raw = self.client.hgetall(self.keys.adapters)
        found = []
        for field, value in sorted(codec.decode_fields(raw).items()):
            try:
                found.append(Registered(check_adapter_name(field), parse_registration(value).path))
            except InvalidRegistration as exc:
                found.append(Registered(field, None, str(exc)))
        return found


def _path_of(value: str | bytes) -> str | None:
    try:
        return parse_registration(value).path
    except InvalidRegistration:
        return None
