"""``{P}:adapters``: register, list and remove adapters at run time (operator verbs).

A registration binds a name to a folder on the model replicas' machines or to a remote
URI (``s3://…``, ``hf://…``). Re-pointing a name (``add --replace``) is allowed: within
``LORAQ_REGISTRY_SYNC_S`` every replica drops the old bytes and serves the new version to
jobs that start afterwards, while jobs already running finish on the old one.
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

    def add(self, name: str, location: str, *, replace: bool = False) -> bool:
        """Register ``name`` at ``location`` (an absolute folder or a URI); ``False`` when
        it already was, to the same place.

        Raises :class:`InvalidRegistration` for a bad name, path or URI, a folder outside
        the roots, or (unless ``replace``) a name registered to another place.
        """
        check_adapter_name(name)
        registration = registration_of(location)
        if self.roots is not None and registration.path is not None:
            check_within_roots(registration.path, self.roots)
        value = registration.model_dump_json(exclude_none=True)
        if replace:
            self.client.hset(self.keys.adapters, name, value)
            return True
        if self.client.hsetnx(self.keys.adapters, name, value):
            return True
        current = self.client.hget(self.keys.adapters, name)
        if current is not None and _location_of(current) == registration.location:
            return False
        raise InvalidRegistration(
            f"adapter {name!r} is already registered elsewhere: re-point it with --replace "
            "(replicas switch within LORAQ_REGISTRY_SYNC_S) or use a new name"
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


def registration_of(location: str) -> AdapterRegistration:
    """The registration of ``location``: a URI when it has a scheme, else a folder."""
    field = "uri" if "://" in location else "path"
    try:
        return AdapterRegistration.model_validate({field: location})
    except ValidationError as exc:
        raise InvalidRegistration(describe(exc)) from None


def _location_of(value: str | bytes) -> str | None:
    try:
        return parse_registration(value).location
    except InvalidRegistration:
        return None
