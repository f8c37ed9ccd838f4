"""API keys: ``Authorization: Bearer <key>``, compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from workers.gateway.errors import ApiError

_bearer = HTTPBearer(
    auto_error=False, description="One of the keys in LORAQ_API_KEYS (comma-separated)."
)


class ApiKeys:
    """The accepted keys. ``repr`` and ``str`` show only how many there are."""

    def __init__(self, secret: SecretStr | None) -> None:
        raw = secret.get_secret_value() if secret is not None else ""
        # Digests, compared digest to digest: equal lengths, so not even a key's length leaks.
        self._keys = [_digest(key.strip()) for key in raw.split(",") if key.strip()]

    @property
    def enabled(self) -> bool:
        """Whether requests need a key at all."""
        return bool(self._keys)

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys; the time taken does not depend on
        which key, nor on how much of one, matched."""
        candidate = _digest(presented)
        matched = False
        for key in self._keys:
            # Every key is compared, so the time does not tell which one matched.
            matched |= hmac.compare_digest(candidate, key)
        return matched

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"

    __str__ = __repr__


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def key_dependency(keys: ApiKeys) -> DependsParam:
    """A route dependency that refuses requests without one of ``keys``."""

    async def require_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None:
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not keys.accepts(credentials.credentials):
            raise _unauthorized("invalid API key")

    return DependsParam(require_key)
