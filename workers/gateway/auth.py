"""API keys: ``Authorization: Bearer <key>``, compared in constant time, never logged.

Each key is also an owner: a job submitted over HTTP records a digest of the key that
submitted it (the record's ``owner`` field), and only that key, or an admin key, reads,
waits on or cancels it. The owner digest is also the key's tenant (v1.4): its jobs share
the workers with other tenants' by weight, and a key may not submit as another tenant.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from workers.gateway.errors import ApiError, error_response

_bearer = HTTPBearer(
    auto_error=False, description="One of the keys in LORAQ_API_KEYS (comma-separated)."
)
# Owner digests are of another kind than the comparison digests: a record's owner field
# says nothing that would let a Redis reader present the key.
_OWNER_TAG = b"loraq-job-owner:"
MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"
INVALID_KEY = "invalid API key"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the owner digest of its key, and whether it sees every job."""

    owner: str | None
    sees_all: bool

    def may_see(self, owner: str | None) -> bool:
        """Whether a job whose record has ``owner`` is this caller's to read or cancel."""
        return self.sees_all or (owner is not None and owner == self.owner)

    @property
    def required_owner(self) -> str | None:
        """The owner a record must have for this caller (``None``: any)."""
        return None if self.sees_all else self.owner

    def tenant_for(self, requested: str | None) -> str | None:
        """The tenant a job this caller submits runs as: the one it names, else the key's
        own (its owner digest). Only an admin key, or anyone with keys off, may name a
        tenant that is not its own: a key could otherwise spend another's share."""
        if requested is None or requested == self.owner:
            return self.owner
        if self.sees_all:
            return requested
        raise ApiError(403, "forbidden", f"tenant {requested!r} is not this API key's tenant")


# With API keys off there is no one to tell apart: every caller sees every job.
ANYONE = Caller(owner=None, sees_all=True)


class ApiKeys:
    """The accepted keys, admin keys among them. ``repr`` and ``str`` show only how many
    there are."""

    def __init__(self, secret: SecretStr | None, admin: SecretStr | None = None) -> None:
        # Digests, compared digest to digest: equal lengths, so not even a key's length leaks.
        self._admin = [_digest(key) for key in _split(admin)]
        self._keys = [_digest(key) for key in _split(secret)] + self._admin

    @property
    def enabled(self) -> bool:
        """Whether requests need a key at all."""
        return bool(self._keys)

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys; the time taken does not depend on
        which key, nor on how much of one, matched."""
        return _matches(_digest(presented), self._keys)

    def caller(self, presented: str | None) -> Caller:
        """The :class:`Caller` presenting ``presented`` (an accepted key, or none when
        keys are off)."""
        if not self.enabled:
            return ANYONE
        if presented is None:  # not past the guard: sees nothing
            return Caller(owner=None, sees_all=False)
        owner = hashlib.sha256(_OWNER_TAG + presented.encode()).hexdigest()[:32]
        return Caller(owner=owner, sees_all=_matches(_digest(presented), self._admin))

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys, {len(self._admin)} admin)"

    __str__ = __repr__


def _split(secret: SecretStr | None) -> list[str]:
    raw = secret.get_secret_value() if secret is not None else ""
    return [key.strip() for key in raw.split(",") if key.strip()]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _matches(candidate: bytes, digests: list[bytes]) -> bool:
    matched = False
    for digest in digests:
        # Every key is compared, so the time does not tell which one matched.
        matched |= hmac.compare_digest(candidate, digest)
    return matched


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


class KeyBeforeBody:
    """ASGI middleware: a request that carries a body (a ``Content-Length`` above 0, or a
    chunked ``Transfer-Encoding``) is checked for a key from its headers alone, and
    refused with 401 before a byte of the body is read; the connection is closed, since
    the unread body may still be on its way. A request without a body goes on to the
    routes' own guard (:func:`key_dependency`), which leaves ``/healthz`` open.
    """

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys.enabled:
            headers = dict(scope.get("headers", ()))
            if _has_body(headers):
                problem = _key_problem(self.keys, headers.get(b"authorization", b""))
                if problem is not None:
                    close = {"WWW-Authenticate": "Bearer", "Connection": "close"}
                    await error_response(401, "unauthorized", problem, close)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0").strip()
    return b"transfer-encoding" in headers or not length.isdigit() or int(length) > 0


def _key_problem(keys: ApiKeys, header: bytes) -> str | None:
    """Why ``Authorization: header`` is no accepted key (``None``: it is one)."""
    # Parsed as the routes' guard (FastAPI's HTTPBearer) parses it: the same key passes both.
    scheme, presented = get_authorization_scheme_param(header.decode("latin-1"))
    if scheme.lower() != "bearer" or not presented:
        return MISSING_KEY
    return None if keys.accepts(presented) else INVALID_KEY


def key_dependency(keys: ApiKeys) -> DependsParam:
    """A route dependency that refuses requests without one of ``keys``."""

    async def require_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None:
            raise _unauthorized(MISSING_KEY)
        if not keys.accepts(credentials.credentials):
            raise _unauthorized(INVALID_KEY)

    return DependsParam(require_key)


async def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Route dependency: the caller of ``request`` (its key was checked by the guard)."""
    keys: ApiKeys = request.app.state.services.keys
    return keys.caller(credentials.credentials if credentials else None)


CallerDep = Annotated[Caller, Depends(current_caller)]
