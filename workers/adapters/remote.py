"""The object-store tier: list an adapter's remote folder and download its files.

One code path over fsspec for every scheme (``s3fs``, ``gcsfs``, ``adlfs``, the Hub's
``HfFileSystem``, fsspec's HTTP), each an optional extra of the package
(``pip install 'loraq[s3]'``…). Credentials come from each library's own chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL``, Google's and
Azure's defaults, ``HF_TOKEN``): nothing here reads, logs or repeats them, and an error
message names the URI and the failure's class, never a library's full text (which may
quote a signed request).

Only the files a PEFT folder needs are fetched, by their fixed names: nothing a listing
holds can make a download land outside its folder. On S3 a folder is first looked up by
those names (a ``HEAD`` of each, at once), not listed: a listing is the one request whose
cost grows with the bucket on some S3-compatible stores (moto's server scans every key),
and a ``HEAD`` carries the size and tag a listing would. The folder is listed only when
the standard names are absent (no ``adapter_config.json`` or no
``adapter_model.safetensors``: an unknown name, a ``.bin`` adapter, a broken folder), so
what such a folder resolves to, and the errors it gives, are a listing's as before.
Called on the resolver's download threads, never on an event loop or the model thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import ErrorType
from schemas.adapter_uris import AdapterUri
from workers.adapters.registry import CONFIG_FILE
from workers.adapters.resolved import ADAPTER_FILES, OPTIONAL_FILES, WEIGHTS_FILES
from workers.errors import EngineError

# The extra that brings each scheme's fsspec implementation.
EXTRAS = {"s3": "s3", "gs": "gcs", "az": "azure", "hf": "hub", "http": "http", "https": "http"}
_CHUNK = 1 << 20
# A folder's requests (its HEADs, its files' GETs) go out together: a job waiting on its
# adapter waits for the slowest, not the sum (fsspec's async stores run them at once on
# their own loop). Only the calling threads wait here: nothing run here submits to it.
_REQUESTS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="loraq-store")
# The names an S3 folder is looked up by before it is listed: a PEFT folder with
# safetensors weights, and the optional files fetched when present.
_BY_NAME = (CONFIG_FILE, WEIGHTS_FILES[0], *OPTIONAL_FILES)


class StoreUnreachable(Exception):
    """The store did not answer (network, timeout, 5xx): worth trying again later."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote folder: its name in the folder, size and the store's tag."""

    name: str
    size: int
    tag: str  # ETag, VersionId, generation or blob id: changes when the bytes change


@dataclass(frozen=True)
class RemoteFolder:
    """An adapter's remote folder as listed now."""

    uri: AdapterUri
    files: tuple[RemoteFile, ...]

    @property
    def size_bytes(self) -> int:
        """What the download takes."""
        return sum(item.size for item in self.files)

    @property
    def version(self) -> str:
        """A digest of the files' names, sizes and tags: a new object under the same URI
        gives a new version."""
        text = "\n".join(f"{f.name}\t{f.size}\t{f.tag}" for f in self.files)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class RemoteStore:
    """Lists and downloads remote adapter folders (thread-safe; one client per scheme)."""

    def __init__(self, *, timeout_s: float, max_bytes: int) -> None:
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._filesystems: dict[str, Any] = {}

    def list_folder(self, uri: AdapterUri) -> RemoteFolder | None:
        """The adapter files at ``uri`` (on S3 looked up by name, listed only when the
        standard names are absent: see the module's docstring); ``None`` when the folder
        has none of them (not there). Raises :class:`StoreUnreachable` when the store
        does not answer and ``EngineError`` for a folder that cannot be an adapter."""
        fs = self._filesystem(uri.scheme)
        found = [
            RemoteFile(name, int(info.get("size") or 0), _tag(info))
            for name, info in _call(lambda: _entries(fs, uri), uri).items()
            if name in ADAPTER_FILES and info.get("type", "file") == "file"
        ]
        names = {item.name for item in found}
        if not names:
            return None
        if CONFIG_FILE not in names:
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER, f"{uri} holds no {CONFIG_FILE}: not a PEFT folder"
            )
        if not names & set(WEIGHTS_FILES):
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER,
                f"{uri} has {CONFIG_FILE} but no adapter_model.safetensors or .bin",
            )
        folder = RemoteFolder(uri, tuple(found))
        if folder.size_bytes > self._max_bytes:
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER,
                f"{uri} holds {folder.size_bytes} bytes, over LORAQ_MAX_ADAPTER_MB "
                f"({self._max_bytes // 2**20} MiB)",
            )
        return folder

    def unchanged(self, folder: RemoteFolder) -> bool:
        """Whether every file of ``folder`` is still what was listed: one ``HEAD`` per
        file (fsspec's ``info``), its size and tag compared with the listing's. ``False``
        for a file changed or gone, or a listing that carried no tag to compare (the
        caller then lists the folder again). A file *added* beside them is not seen
        here: only a listing finds it. Raises :class:`StoreUnreachable` when the store
        does not answer."""
        if not all(item.tag for item in folder.files):
            return False
        fs = self._filesystem(folder.uri.scheme)

        def same(item: RemoteFile) -> bool:
            path = store_path(folder.uri, item.name)
            try:
                info = _call(lambda: _head(fs, folder.uri.scheme, path), folder.uri)
            except FileNotFoundError:
                return False
            return int(info.get("size") or 0) == item.size and item.tag in _tags(info)

        return all(list(_REQUESTS.map(same, folder.files)))

    def download(self, folder: RemoteFolder, dest: Path) -> dict[str, str]:
        """Write ``folder``'s files into ``dest`` (an empty folder of the caller's), all
        at once, and return each file's sha256; refuses a file whose size is not what was
        listed."""
        fs = self._filesystem(folder.uri.scheme)

        def fetch(item: RemoteFile) -> tuple[str, str]:
            target = dest / item.name
            path = store_path(folder.uri, item.name)
            try:
                digest = _call(lambda: _copy(fs, path, target), folder.uri)
            except FileNotFoundError:
                # Deleted or replaced since the listing: a later try lists it again.
                raise StoreUnreachable(f"{item.name}: gone since the listing") from None
            size = target.stat().st_size
            if size != item.size:
                # Changed between the listing and the read, or cut short: try again later.
                raise StoreUnreachable(f"{item.name}: {size} bytes read of {item.size} listed")
            return item.name, digest

        return dict(_REQUESTS.map(fetch, folder.files))

    def _filesystem(self, scheme: str) -> Any:
        fs = self._filesystems.get(scheme)
        if fs is None:
            fs = self._filesystems[scheme] = _open_filesystem(scheme, self._timeout_s)
        return fs


def _open_filesystem(scheme: str, timeout_s: float) -> Any:
    try:
        import fsspec

        fs = fsspec.filesystem(scheme, **_options(scheme, timeout_s))
    except ImportError:
        raise EngineError(
            ErrorType.INCOMPATIBLE_ADAPTER,
            f"{scheme}:// adapters need the {EXTRAS[scheme]} extra on the model workers "
            f"(pip install 'loraq[{EXTRAS[scheme]}]')",
        ) from None
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs's own five tries with backoff: the resolver retries instead
    return fs


def _options(scheme: str, timeout_s: float) -> Mapping[str, Any]:
    """Each library's options: no listing cache (a new version must be seen), timeouts,
    and the library's own retries left to the resolver's."""
    if scheme == "s3":
        client: dict[str, Any] = {}
        if os.environ.get("AWS_ENDPOINT_URL"):
            client["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        return {
            "use_listings_cache": False,
            "client_kwargs": client,
            "config_kwargs": {
                "connect_timeout": timeout_s,
                "read_timeout": timeout_s,
                "retries": {"max_attempts": 1},
            },
        }
    if scheme in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout_s)}}
    return {"use_listings_cache": False} if scheme in ("gs", "az") else {}


def store_path(uri: AdapterUri, name: str) -> str:
    """The fsspec path of file ``name`` in ``uri``'s folder."""
    if uri.scheme in ("http", "https"):
        return f"{uri}/{name}"
    if uri.scheme == "hf":
        repo = "/".join(uri.segments[:2]) + (f"@{uri.revision}" if uri.revision else "")
        return "/".join((repo, *uri.segments[2:], name))
    return "/".join((*uri.segments, name))


def _entries(fs: Any, uri: AdapterUri) -> dict[str, Mapping[str, Any]]:
    """The folder's files by name: on S3 a ``HEAD`` of each standard name (at once), and
    a listing when those are absent; one listing elsewhere; one ``HEAD`` per file name
    fetched on HTTP, which cannot list."""
    if uri.scheme in ("http", "https"):
        return _heads(fs, uri, ADAPTER_FILES)
    if uri.scheme == "s3":
        found = _heads(fs, uri, _BY_NAME)
        if CONFIG_FILE in found and WEIGHTS_FILES[0] in found:
            return found
        return _s3_listing(fs, uri)
    try:
        listing = fs.ls(store_path(uri, "").rstrip("/"), detail=True)
    except FileNotFoundError:
        return {}
    return {item["name"].rstrip("/").rsplit("/", 1)[-1]: item for item in listing}


def _s3_listing(fs: Any, uri: AdapterUri) -> dict[str, Mapping[str, Any]]:
    """The objects directly in ``uri``'s folder, by name (one request a page). Not
    s3fs's ``ls``, which lists the parent as well when the folder is empty, to tell a
    file from a missing folder: the whole source root, for an unknown name."""
    bucket, key, _ = fs.split_path(store_path(uri, "x"))
    prefix = key[: -len("x")]
    found: dict[str, Mapping[str, Any]] = {}
    pages: dict[str, Any] = {}
    while True:
        try:
            out = fs.call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **pages
            )
        except FileNotFoundError:  # no such bucket
            return {}
        for item in out.get("Contents", []):
            name = item["Key"][len(prefix) :]
            found[name] = {"size": item["Size"], "ETag": item.get("ETag", ""), "type": "file"}
        if not out.get("IsTruncated"):
            return found
        pages = {"ContinuationToken": out["NextContinuationToken"]}


def _heads(fs: Any, uri: AdapterUri, names: tuple[str, ...]) -> dict[str, Mapping[str, Any]]:
    """The files among ``names`` that ``uri``'s folder holds, by a ``HEAD`` of each."""

    def head(name: str) -> tuple[str, Mapping[str, Any] | None]:
        try:
            return name, _head(fs, uri.scheme, store_path(uri, name))
        except FileNotFoundError:
            return name, None

    return {name: info for name, info in _REQUESTS.map(head, names) if info is not None}


def _head(fs: Any, scheme: str, path: str) -> Mapping[str, Any]:
    """``path``'s size and tags. On S3 the ``HEAD`` alone: s3fs's ``info`` of an absent
    key lists its prefix as well, to tell a "directory" (a listing per absent name)."""
    if scheme != "s3":
        info: Mapping[str, Any] = fs.info(path)
        return info
    bucket, key, _ = fs.split_path(path)
    out = fs.call_s3("head_object", Bucket=bucket, Key=key)
    return {
        "size": out["ContentLength"],
        "ETag": out.get("ETag", ""),
        "VersionId": out.get("VersionId"),
        "type": "file",
    }


# Where each library puts what changes with an object's bytes, most specific first.
_TAG_KEYS = ("VersionId", "ETag", "generation", "etag", "blob_id", "md5Hash", "last_modified")


def _tag(info: Mapping[str, Any]) -> str:
    tags = _tags(info)
    return tags[0] if tags else ""


def _tags(info: Mapping[str, Any]) -> list[str]:
    """Every tag ``info`` carries, most specific first. A ``HEAD`` may carry more than a
    listing of the same object (S3's ``VersionId``, on a versioned bucket): the listed tag
    is then one of these, not necessarily the first."""
    return [str(info[key]).strip('"') for key in _TAG_KEYS if info.get(key)]


def _copy(fs: Any, path: str, target: Path) -> str:
    """Download ``path`` to ``target`` with the library's own ``get_file`` (one GET on an
    object store, in parts for a large file), then its sha256 from the local copy."""
    fs.get_file(path, str(target))
    digest = hashlib.sha256()
    with target.open("rb") as copy:
        while chunk := copy.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _call(call: Any, uri: AdapterUri) -> Any:
    """``call()``, with the store's failures sorted: missing, refused, or unreachable."""
    try:
        return call()
    except (FileNotFoundError, EngineError, StoreUnreachable):
        raise
    except PermissionError:
        raise EngineError(
            ErrorType.INCOMPATIBLE_ADAPTER,
            f"{uri}: access denied with the workers' credentials",
        ) from None
    except Exception as exc:  # the store's, whatever the library: try again later
        raise StoreUnreachable(f"{uri}: {type(exc).__name__}") from None
