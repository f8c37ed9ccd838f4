"""The workers' own adapter folders: the configured names and roots.

Sources: the static map (``LORAQ_ADAPTERS``) and a scan of ``LORAQ_ADAPTER_DIR`` (one
sub-folder with ``adapter_config.json`` per adapter). The configured roots are the
scanned folder and the statically mapped folders; a folder outside them (after resolving
symlinks) is refused, so a client's name, or an operator's run-time registration, can
never make a worker open an arbitrary path. The catalogue
(:mod:`workers.adapters.catalogue`) puts this in front of its other sources.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from schemas import ErrorType
from schemas.adapters import InvalidRegistration, check_adapter_name, is_within
from schemas.jobs import ADAPTER_NAME_PATTERN
from workers.errors import EngineError

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
_NAME = re.compile(ADAPTER_NAME_PATTERN)


def check_name(name: str) -> None:
    """Raise a ``validation`` error unless ``name`` is a well-formed adapter name."""
    try:
        check_adapter_name(name)
    except InvalidRegistration as exc:
        raise EngineError(ErrorType.VALIDATION, str(exc)) from None


def not_registered(name: str) -> EngineError:
    """The ``unknown_adapter`` error of a name no source has (every lookup says it alike)."""
    return EngineError(ErrorType.UNKNOWN_ADAPTER, f"adapter {name!r} is not registered")


class AdapterRegistry:
    """Thread-safe map of adapter names to folders under the configured roots."""

    def __init__(self, static: dict[str, str], adapter_dir: str | None) -> None:
        self._lock = threading.Lock()
        self._dir = Path(adapter_dir).resolve() if adapter_dir else None
        self._roots: list[Path] = [self._dir] if self._dir else []
        self._folders: dict[str, Path] = {}
        self._scan()
        for name, folder in static.items():
            resolved = Path(folder).resolve()
            self._roots.append(resolved)
            self.add(name, str(resolved))

    @property
    def roots(self) -> list[Path]:
        """Folders that registered adapters must live in."""
        return list(self._roots)

    def names(self) -> list[str]:
        """Registered adapter names, sorted."""
        with self._lock:
            return sorted(self._folders)

    def check_folder(self, folder: str) -> Path:
        """``folder`` resolved; a ``validation`` error when it is outside the roots."""
        resolved = Path(folder).resolve()
        if not any(is_within(resolved, root) for root in self._roots):
            raise EngineError(
                ErrorType.VALIDATION,
                f"adapter folder {folder!r} is outside the configured adapter roots",
            )
        return resolved

    def add(self, name: str, folder: str) -> Path:
        """Map ``name`` to ``folder``, which must lie under a configured root."""
        check_name(name)
        resolved = self.check_folder(folder)
        with self._lock:
            self._folders[name] = resolved
        return resolved

    def find(self, name: str) -> Path | None:
        """The folder of ``name``, or ``None`` when it is not registered.

        A folder dropped into the scanned directory after start is found here too.
        """
        check_name(name)
        with self._lock:
            folder = self._folders.get(name)
        if folder is None and self._dir is not None:
            candidate = self._dir / name
            if (candidate / CONFIG_FILE).is_file():
                self.add(name, str(candidate))
                folder = candidate.resolve()
        return folder

    def resolve(self, name: str) -> Path:
        """The folder of ``name``; ``unknown_adapter`` when it is not registered."""
        folder = self.find(name)
        if folder is None:
            raise not_registered(name)
        return folder

    def _scan(self) -> None:
        if self._dir is None or not self._dir.is_dir():
            return
        for child in sorted(self._dir.iterdir()):
            if not (child / CONFIG_FILE).is_file():
                continue
            if not _NAME.fullmatch(child.name) or not is_within(child.resolve(), self._dir):
                log.warning("skipping adapter folder %s: bad name or outside the root", child)
                continue
            self._folders[child.name] = child.resolve()
