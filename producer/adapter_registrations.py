"""``{P}:adapters``: register, list and remove adapters at run time (operator verbs).

A registration binds a name to a folder on the model workers' machines for good: the
workers load it on first use and keep its weights, so registering a name again with
another folder is refused. A new version of an adapter gets a new name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis
from pydantic import ValidationError

from schemas.adapters import (
    AdapterRegistration,
    InvalidRegistration,
    Registered,
    check_adapter_name,
    check_within_roots,
    parse_registration,
    read_registrations,
)
from schemas.keys import Keys
from schemas.validation import describe


class AdapterRegistrations:
    """The run-time adapter registrations of one prefix, over a sync Redis client."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, roots: Sequence[Path] | None = None
    ) -> None:
        """``roots``: the workers' adapter roots; :meth:`add` then refuses folders outside
        them, as the workers would (``None``: no check here, the workers still check)."""
        self.client = client
        self.keys = keys
        self.roots = roots

    def add(self, name: str, path: str) -> bool:
        """Register ``name`` at ``path``; ``False`` when it already was, to the same folder.

        Raises :class:`InvalidRegistration` for a bad name or path, a folder outside the
        roots, or a name registered to another folder.
        """
        check_adapter_name(name)
        try:
            value = AdapterRegistration(path=path).model_dump_json()
        except ValidationError as exc:
            raise InvalidRegistration(describe(exc)) from None
        if self.roots is not None:
            check_within_roots(path, self.roots)
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
        return read_registrations(self.client.hgetall(self.keys.adapters))


def _path_of(value: str | bytes) -> str | None:
    try:
        return parse_registration(value).path
    except InvalidRegistration:
        return None
