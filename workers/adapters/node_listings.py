"""The node's listings: what the object store last said each remote adapter folder holds.

A "listing" here is a full look-up of the folder's files (:meth:`RemoteStore.list_folder`:
on S3 a ``HEAD`` of each standard PEFT file name, and a ``LIST`` only when those are
absent; elsewhere a ``LIST``), as against a revalidation of the files already known.
Kept in the disk tier's folder (``listings/``) and shared by every replica of the node,
so that a name is listed once per node per ``LORAQ_REGISTRY_SYNC_S``, not once per
replica process: a warm replica that starts beside others (or restarts within the sync
bound) asks the store nothing. A listing carries the wall-clock time the store last
vouched for it, and a reader trusts it only while that is younger than the age it is
given, so a new object under an adapter's URI is seen exactly as soon as if each replica
asked the store itself.

A listing past that age is revalidated, not listed again, while its last full listing is
younger than ``relist_s`` (``LORAQ_ADAPTER_RELIST_S``): one ``HEAD`` per file it names
(size and tag compared), so a file replaced in place or deleted is seen within the sync
bound as before. A file *added* beside unchanged ones only a listing finds: the folder is
listed again in full once its last listing is ``relist_s`` old, and at once when a
``HEAD`` shows a change or a file gone. A revalidation is used only while the trust it
gives (``max_age_s``) ends within ``relist_s`` of the last full listing, so an added file
reaches every job that starts later than ``max(relist_s, max_age_s)`` after it was added.

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
    """A remote folder as the store listed it; when it was listed in full, and when the
    store last vouched for it (that listing, or a ``HEAD`` of each of its files), in
    seconds since the epoch."""

    folder: RemoteFolder
    listed_at: float
    checked_at: float


class NodeListings:
    """The node's recent listings of remote adapter folders (process- and thread-safe)."""

    def __init__(self, root: Path) -> None:
        self._folder = root / "listings"
        self._folder.mkdir(parents=True, exist_ok=True)

    def get(
        self,
        uri: AdapterUri,
        max_age_s: float,
        list_now: Callable[[bool], RemoteFolder | None],
        *,
        unchanged: Callable[[RemoteFolder], bool] | None = None,
        relist_s: float = 0.0,
    ) -> Listing | None:
        """The node's listing of ``uri`` if the store vouched for it less than
        ``max_age_s`` ago; else, while its last full listing is recent enough (see the
        module's docstring), the same listing if ``unchanged(folder)``; else
        ``list_now(first)``'s, ``first`` when the node has no listing of ``uri`` at all
        (a look-up that may fetch the files on its way: it runs under the folder's lock,
        so the node's other replicas, waiting, find them in place). Kept for the node's
        other replicas; ``None`` when the store has no such folder. Raises what
        ``list_now`` or ``unchanged`` raise."""
        key = hashlib.sha256(str(uri).encode()).hexdigest()[:32]
        lock = os.open(
            self._folder / f"stripe-{int(key, 16) % _STRIPES:03d}.lock",
            os.O_RDWR | os.O_CREAT,
            0o644,
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one lister per folder; the others read its answer
            known = self._read(key, uri)
            if known is not None and 0 <= time.time() - known.checked_at < max_age_s:
                return known
            asked = time.time()  # the answer is at least this recent
            if (
                known is not None
                and unchanged is not None
                and known.listed_at <= asked
                and asked + max_age_s <= known.listed_at + relist_s
                and unchanged(known.folder)
            ):
                listing = Listing(known.folder, known.listed_at, asked)
            else:
                folder = list_now(known is None)
                if folder is None:
                    self._path(key).unlink(missing_ok=True)
                    return None
                listing = Listing(folder, asked, asked)
            self._write(key, listing)
            return listing
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
            listed_at = float(data["listed_at"])
            checked_at = float(data.get("checked_at", listed_at))  # written before HEADs
            return Listing(RemoteFolder(uri, files), listed_at, checked_at)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write(self, key: str, listing: Listing) -> None:
        record = {
            "uri": str(listing.folder.uri),
            "listed_at": listing.listed_at,
            "checked_at": listing.checked_at,
            "files": [[f.name, f.size, f.tag] for f in listing.folder.files],
        }
        staging = self._folder / f".{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            staging.write_text(json.dumps(record))
            os.replace(staging, self._path(key))
        except OSError:
            staging.unlink(missing_ok=True)  # a full disk costs the next lister a call
