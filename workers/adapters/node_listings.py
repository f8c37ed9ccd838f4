"""The node's listings: what the object store last said each remote adapter folder holds.

Kept in the disk tier's folder (``listings/``) and shared by every replica of the node,
so that a name is listed once per node per ``LORAQ_REGISTRY_SYNC_S``, not once per
replica process: a warm replica that starts beside others (or restarts within the sync
bound) asks the store nothing. A listing carries the wall-clock time it was asked at, and
a reader trusts it only while it is younger than the age it is given, so a new object
under an adapter's URI is seen exactly as soon as if each replica listed it itself.

One process lists a folder at a time (a ``flock`` on one of a fixed set of stripes, so
that a flood of unknown names leaves no lock file behind each); the others wait and read
its answer. A folder the store does not have is not kept: misses stay in each replica's
own short memory. Each file is written whole (a temporary name renamed into place).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.adapter_uris import AdapterUri
from workers.adapters.remote import RemoteFile, RemoteFolder

_STRIPES = 256  # lock stripes: two names share one in 1/256 of the cases


@dataclass(frozen=True)
class Listing:
    """A remote folder as the store listed it, and when (seconds since the epoch)."""

    folder: RemoteFolder
    listed_at: float


class NodeListings:
    """The node's recent listings of remote adapter folders (process- and thread-safe)."""

    def __init__(self, root: Path) -> None:
        self._folder = root / "listings"
        self._folder.mkdir(parents=True, exist_ok=True)

    def get(
        self, uri: AdapterUri, max_age_s: float, list_now: Callable[[], RemoteFolder | None]
    ) -> Listing | None:
        """The node's listing of ``uri`` if it is younger than ``max_age_s``, else
        ``list_now()``'s, kept for the node's other replicas; ``None`` when the store has
        no such folder. Raises what ``list_now`` raises."""
        key = hashlib.sha256(str(uri).encode()).hexdigest()[:32]
        lock = os.open(
            self._folder / f"stripe-{int(key, 16) % _STRIPES:03d}.lock",
            os.O_RDWR | os.O_CREAT,
            0o644,
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one lister per folder; the others read its answer
            known = self._read(key, uri)
            if known is not None and 0 <= time.time() - known.listed_at < max_age_s:
                return known
            listed_at = time.time()  # asked now: the answer is at least this recent
            folder = list_now()
            if folder is None:
                self._path(key).unlink(missing_ok=True)
                return None
            self._write(key, Listing(folder, listed_at))
            return Listing(folder, listed_at)
        finally:
            os.close(lock)

    def _path(self, key: str) -> Path:
        return self._folder / f"{key}.json"

    def _read(self, key: str, uri: AdapterUri) -> Listing | None:
        try:
            data = json.loads(self._path(key).read_text())
            if data["uri"] != str(uri):  # a digest collision: never someone else's files
                return None
            files = tuple(RemoteFile(str(n), int(s), str(t)) for n, s, t in data["files"])
            return Listing(RemoteFolder(uri, files), float(data["listed_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write(self, key: str, listing: Listing) -> None:
        record = {
            "uri": str(listing.folder.uri),
            "listed_at": listing.listed_at,
            "files": [[f.name, f.size, f.tag] for f in listing.folder.files],
        }
        staging = self._folder / f".{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            staging.write_text(json.dumps(record))
            os.replace(staging, self._path(key))
        except OSError:
            staging.unlink(missing_ok=True)  # a full disk costs the next lister a call
