"""The adapter catalogue: a name → where its bytes are. One owner, above every backend.

Sources, first match wins: the workers' own configuration (``LORAQ_ADAPTERS``, the
folders under ``LORAQ_ADAPTER_DIR``: :class:`AdapterRegistry`), then the run-time
registrations in ``{P}:adapters`` (a folder under those roots, or a URI), then the source
root ``LORAQ_ADAPTER_SOURCE`` (``<source>/<name>/``, so ten thousand adapters need no
registration). A name is only ever a name: it passes :func:`check_name` before it is
looked up anywhere, and a URI is built from it only by :meth:`AdapterUri.child`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from schemas import ErrorType
from schemas.adapter_uris import AdapterUri, parse_adapter_uri
from schemas.adapters import AdapterRegistration
from workers.adapters.registry import AdapterRegistry, check_name, not_registered
from workers.errors import EngineError

log = logging.getLogger(__name__)

# The run-time registration of a name, or None (reads {P}:adapters).
ReadRegistration = Callable[[str], Awaitable[AdapterRegistration | None]]


@dataclass(frozen=True)
class Location:
    """Where a name's files are: a local ``folder`` (checked to be under the roots) or a
    remote ``uri`` (downloaded to the disk tier)."""

    name: str
    folder: Path | None = None
    uri: AdapterUri | None = None


class AdapterCatalogue:
    """Finds where an adapter name's files are (async: it may read Redis)."""

    def __init__(
        self,
        local: AdapterRegistry,
        *,
        registrations: ReadRegistration | None = None,
        source: AdapterUri | None = None,
    ) -> None:
        self._local = local
        self._registrations = registrations
        self._source = source

    @classmethod
    def of(
        cls,
        adapters: dict[str, str],
        adapter_dir: str | None,
        *,
        source: str | None = None,
        registrations: ReadRegistration | None = None,
    ) -> AdapterCatalogue:
        """The catalogue of these settings (``source``: ``LORAQ_ADAPTER_SOURCE``)."""
        root = parse_adapter_uri(source) if source else None
        return cls(AdapterRegistry(adapters, adapter_dir), registrations=registrations, source=root)

    @property
    def local(self) -> AdapterRegistry:
        """The configured local adapters and roots."""
        return self._local

    async def locate(self, name: str) -> Location:
        """Where ``name``'s files are; ``validation`` for a malformed name,
        ``unknown_adapter`` when no source has it."""
        check_name(name)
        folder = self._local.find(name)
        if folder is not None:
            return Location(name, folder=folder)
        registration = await self._registrations(name) if self._registrations else None
        if registration is not None:
            return self._registered(name, registration)
        if self._source is not None:
            return Location(name, uri=self._source.child(name))
        raise not_registered(name)

    def _registered(self, name: str, registration: AdapterRegistration) -> Location:
        if registration.uri is not None:
            return Location(name, uri=parse_adapter_uri(registration.uri))
        try:
            return Location(name, folder=self._local.check_folder(registration.path or ""))
        except EngineError:
            log.warning("adapter %s: run-time registration outside the adapter roots", name)
            raise EngineError(
                ErrorType.UNKNOWN_ADAPTER,
                f"adapter {name!r} is registered at run time with a folder outside the "
                "workers' adapter roots; ask the operator to fix it",
            ) from None
