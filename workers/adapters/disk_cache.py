"""The node's disk tier: downloaded adapter folders, shared by every replica on the node.

Layout under ``LORAQ_ADAPTER_DISK_CACHE_DIR``::

    entries/<key>/        one adapter version, complete: its files and MANIFEST
    locks/<key>.lock      flock: shared while a process reads the entry, exclusive to
                          delete it
    locks/<key>.fetch     flock: exclusive while a process downloads the entry (so the
                          node downloads it once; readers never wait for it)
    tmp/<pid>-<random>/   downloads under way (renamed into entries/ whole)
    cache.lock            exclusive while room is made and an entry is put in place

A key is a digest of the source URI and the version, so a re-pointed name never reads
the old bytes. An entry appears by one ``rename`` of a finished folder, so no reader sees
half a download; each use checks the manifest's sizes, and each process checks the
sha256 digests once, so a damaged entry is deleted and fetched again. Eviction is least
recently used by bytes (:mod:`workers.adapters.disk_policy`) and skips every entry a
process holds. Entries outlive the replicas that fetched them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas.replicas import DiskTierCounters
from workers.adapters.disk_policy import DiskEntry, victims

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
# Writes the adapter's files into the folder given; returns their sha256 by file name.
Writer = Callable[[Path], dict[str, str]]


@dataclass
class DiskLease:
    """A process's hold on one entry: it is not deleted while the lease is open."""

    key: str
    folder: Path
    _fd: int = field(repr=False)

    def close(self) -> None:
        """Give the entry back (its lock goes with the descriptor)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def entry_key(source: str, version: str) -> str:
    """The entry name of ``version`` of the adapter at ``source`` (no path characters)."""
    return hashlib.sha256(f"{source}\n{version}".encode()).hexdigest()[:32]


class DiskCache:
    """Adapter folders on this node's disk, within a byte budget (thread- and process-safe)."""

    def __init__(self, root: Path, *, budget_bytes: int) -> None:
        self._root = root
        self._budget = budget_bytes
        self._entries = root / "entries"
        self._locks = root / "locks"
        self._tmp = root / "tmp"
        for folder in (self._entries, self._locks, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._verified: set[str] = set()  # entries whose digests this process checked
        # Each entry's size as its manifest gave it (a key's files never change): the
        # budget check reads only the manifests of entries this process has not seen.
        self._sizes: dict[str, int] = {}
        self._fresh: set[str] = set()  # put here, not leased since: see put()
        self._guard = threading.Lock()
        self.stats = DiskTierCounters()
        self._sweep_tmp()

    @property
    def root(self) -> Path:
        """The cache's folder."""
        return self._root

    def lease(self, key: str) -> DiskLease | None:
        """A hold on entry ``key`` when it is there and intact; ``None`` when it must be
        fetched (missing or damaged: :meth:`fetch` replaces it)."""
        fd = self._open_lock(key)
        fcntl.flock(fd, fcntl.LOCK_SH)
        folder = self._entries / key
        if self._intact(key, folder):
            with contextlib.suppress(OSError):
                os.utime(folder / MANIFEST)  # its last use, for the LRU
            with self._guard:
                if key in self._fresh:
                    self._fresh.discard(key)
                else:
                    self.stats.hits += 1
            return DiskLease(key, folder, fd)
        os.close(fd)
        return None

    def fetch(self, key: str, source: str, size_bytes: int, write: Writer) -> DiskLease:
        """Entry ``key``, downloaded by ``write`` unless another replica of the node has it
        or is fetching it (then this waits for that one). Raises what ``write`` raises."""
        fetching = self._open_lock(key, ".fetch")
        try:
            fcntl.flock(fetching, fcntl.LOCK_EX)  # one download per entry per node
            self._ensure(key, source, size_bytes, write)
            # Held for reading before the download lock goes: no evictor can slip between.
            fd = self._open_lock(key)
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fetching)
        return DiskLease(key, self._entries / key, fd)

    def put(
        self, key: str, source: str, size_bytes: int, write: Writer, *, fetched_s: float
    ) -> None:
        """:meth:`fetch` without the hold: for files a look-up fetched on its way (in
        ``fetched_s``, counted as download time), put in place before the look-up is
        published to the node's other replicas. The next :meth:`lease` of ``key`` here
        is this miss's read, not a hit."""
        fetching = self._open_lock(key, ".fetch")
        try:
            fcntl.flock(fetching, fcntl.LOCK_EX)
            if self._ensure(key, source, size_bytes, write, fetched_s=fetched_s):
                with self._guard:
                    self._fresh.add(key)
        finally:
            os.close(fetching)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty folder beside the entries (so its files move in by ``rename``),
        deleted with what is left in it at the end (or by the sweep, if this process
        dies)."""
        folder = self._tmp / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        try:
            yield folder
        finally:
            self._remove_tree(folder)

    def _ensure(
        self, key: str, source: str, size_bytes: int, write: Writer, *, fetched_s: float = 0.0
    ) -> bool:
        """Download entry ``key`` unless it is there intact (the fetch lock held); whether
        it was downloaded."""
        if self._intact(key, self._entries / key):
            return False
        with self._guard:
            self.stats.misses += 1
        self._download(key, source, size_bytes, write, fetched_s)
        return True

    def discard(self, key: str) -> bool:
        """Delete entry ``key`` now unless a process holds it; whether it went."""
        fd = self._open_lock(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            return self._delete(key)
        finally:
            os.close(fd)

    def _download(
        self, key: str, source: str, size_bytes: int, write: Writer, fetched_s: float
    ) -> None:
        started = time.perf_counter() - fetched_s
        if (self._entries / key).exists():
            self._delete_when_unread(key)
        with self.staging() as staging:
            digests = write(staging)
            files = {
                name: {"size": (staging / name).stat().st_size, "sha256": digest}
                for name, digest in digests.items()
            }
            manifest = {"source": source, "files": files, "fetched_at": time.time()}
            (staging / MANIFEST).write_text(json.dumps(manifest))
            with self._cache_lock():
                used = self._make_room(size_bytes)
                os.rename(staging, self._entries / key)
        with self._guard:
            self._verified.add(key)
            self.stats.bytes_used = used + size_bytes
            self.stats.downloads += 1
            self.stats.download_bytes += size_bytes
            self.stats.download_s_total += time.perf_counter() - started

    def _delete_when_unread(self, key: str) -> None:
        """Delete damaged entry ``key`` once no process reads it: one that held it before
        the damage (or that has not checked its digests) may still be reading its files."""
        fd = self._open_lock(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._delete(key)
        finally:
            os.close(fd)

    def _make_room(self, incoming: int) -> int:
        """Evict for ``incoming`` more bytes; the bytes left on disk."""
        used = self._used()
        if used + incoming <= self._budget:
            return used
        entries = self._scan()
        used = sum(entry.size_bytes for entry in entries)
        # Over budget: only now ask which entries a process holds (a lock probe each).
        entries = [DiskEntry(e.key, e.size_bytes, e.last_used, self._held(e.key)) for e in entries]
        for key, size in victims(entries, incoming_bytes=incoming, budget_bytes=self._budget):
            if self.discard(key):
                used -= size
                with self._guard:
                    self.stats.evictions += 1
                log.info("disk tier evicted adapter entry %s", key)
        return used

    def _used(self) -> int:
        """The bytes the entries take: a listing of ``entries/``, and the manifests of
        those this process has not sized yet (not one read per entry per download)."""
        names = set(os.listdir(self._entries))
        for name in names - self._sizes.keys():
            try:
                files = json.loads((self._entries / name / MANIFEST).read_text())["files"]
                self._sizes[name] = sum(int(item["size"]) for item in files.values())
            except (OSError, ValueError, KeyError):
                continue  # half deleted: not counted, as by a scan
        for name in self._sizes.keys() - names:
            del self._sizes[name]
        return sum(self._sizes[name] for name in names if name in self._sizes)

    def _scan(self) -> list[DiskEntry]:
        found = []
        for folder in self._entries.iterdir():
            try:
                manifest = folder / MANIFEST
                files = json.loads(manifest.read_text())["files"]
                used = manifest.stat().st_mtime
            except (OSError, ValueError, KeyError):
                continue
            size = sum(int(item["size"]) for item in files.values())
            found.append(DiskEntry(folder.name, size, used, in_use=False))
        return found

    def _held(self, key: str) -> bool:
        fd = self._open_lock(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's lock too
        return False

    def _intact(self, key: str, folder: Path) -> bool:
        """Whether the entry's files are all there with their sizes (and, once per
        process, their digests); a damaged one is replaced by the next :meth:`fetch`."""
        try:
            files = json.loads((folder / MANIFEST).read_text())["files"]
            sizes_ok = all(
                (folder / name).stat().st_size == item["size"] for name, item in files.items()
            )
        except (OSError, ValueError, KeyError):
            sizes_ok = False
            files = {}
        if sizes_ok and key not in self._verified:
            sizes_ok = all(_sha256(folder / name) == item["sha256"] for name, item in files.items())
            if sizes_ok:
                with self._guard:
                    self._verified.add(key)
        if not sizes_ok and folder.exists():
            with self._guard:
                self.stats.corrupt_entries += 1
            log.warning("disk tier entry %s is damaged; fetching it again", key)
        return sizes_ok

    def _delete(self, key: str) -> bool:
        folder = self._entries / key
        if not folder.exists():
            return False
        self._remove_tree(folder)
        with self._guard:
            self._verified.discard(key)
        return True

    def _remove_tree(self, folder: Path) -> None:
        """Delete ``folder``: renamed out of place first, so nobody sees half of it."""
        if not folder.exists():
            return
        trash = self._tmp / f"trash-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep_tmp(self) -> None:
        """Delete downloads left by processes that died (their pid is gone)."""
        for folder in self._tmp.iterdir():
            owner = folder.name.split("-", 1)[0]
            if owner.isdigit() and _alive(int(owner)):
                continue
            shutil.rmtree(folder, ignore_errors=True)

    def _open_lock(self, key: str, suffix: str = ".lock") -> int:
        return os.open(self._locks / f"{key}{suffix}", os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def _cache_lock(self) -> Iterator[None]:
        fd = os.open(self._root / "cache.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
