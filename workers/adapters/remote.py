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
what such a folder resolves to, and the errors it gives, are a listing's as before. A
look-up that will be followed by a download (:meth:`RemoteStore.fetch_folder`, the
node's first for a use) is a ``GET`` of each name instead: the answers carry the same
size and tag, for the very bytes they bring, so a never-seen adapter costs one round of
requests. Called on the resolver's download threads, never on an event loop or the
model thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Collection, Mapping
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


# What a look-up fetched on its way: each file's sha256 by name, the files in the folder given.
Fetched = dict[str, str]


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
        return self._folder(uri, _call(lambda: _entries(fs, uri), uri))

    def fetch_folder(self, uri: AdapterUri, dest: Path) -> tuple[RemoteFolder | None, Fetched]:
        """:meth:`list_folder`'s answer, with the files already written into ``dest`` (an
        empty folder of the caller's) and their sha256 where the look-up could fetch
        them in the same requests: on S3, a ``GET`` of each standard name at once
        instead of a ``HEAD`` (its answer carries the size and tag a ``HEAD`` would, for
        the very bytes it brings). Nothing is fetched (an empty mapping) for a folder that
        is listed, elsewhere than S3, or with a file too large to stream here. ``dest``
        may then hold files, as after an error: the caller deletes it."""
        if uri.scheme != "s3":
            return self.list_folder(uri), {}
        fs = self._filesystem(uri.scheme)
        found = _call(lambda: _gets(fs, uri, dest, self._max_bytes), uri)
        entries = {name: info for name, (info, _) in found.items()}
        if not _found_by_name(found):
            entries = _call(lambda: _s3_listing(fs, uri), uri)
        folder = self._folder(uri, entries)
        fetched = {name: digest for name, (_, digest) in found.items() if digest}
        if folder is None or fetched.keys() != {item.name for item in folder.files}:
            return folder, {}  # listed, or a file too large to stream here: all downloaded
        return folder, fetched

    def _folder(
        self, uri: AdapterUri, entries: Mapping[str, Mapping[str, Any]]
    ) -> RemoteFolder | None:
        """The adapter folder ``entries`` (a look-up's answer by file name) make, checked."""
        found = [
            RemoteFile(name, int(info.get("size") or 0), _tag(info))
            for name, info in entries.items()
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
        if _found_by_name(found):
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
    return _s3_info(fs.call_s3("head_object", Bucket=bucket, Key=key))


def _s3_info(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """The size and tags of an S3 ``HEAD`` or ``GET`` answer."""
    return {
        "size": answer["ContentLength"],
        "ETag": answer.get("ETag", ""),
        "VersionId": answer.get("VersionId"),
        "type": "file",
    }


def _gets(
    fs: Any, uri: AdapterUri, dest: Path, max_bytes: int
) -> dict[str, tuple[Mapping[str, Any], str]]:
    """The files among the standard names that ``uri``'s S3 folder holds, each with its
    size and tags and, when it was small enough to stream here, its bytes in ``dest`` and
    their sha256 ("" when not). A file is streamed while the folder's files streamed so
    far, with it, stay within the size bound (so a folder over it writes no more than the
    bound before it is refused, as a ``HEAD`` would have refused it unread), and when it
    is under s3fs's block size (past which :meth:`RemoteStore.download` fetches it in
    parts). One ``GET`` of each name, at once on s3fs's loop. Raises the first failure
    other than a missing name, after every request has ended (nothing is left writing
    into ``dest``)."""
    import fsspec.asyn

    block = int(fs.default_block_size)
    left = max_bytes  # the bound's bytes not yet taken by a streamed file (one loop)

    async def get(name: str) -> tuple[Mapping[str, Any], str] | None:
        nonlocal left
        bucket, key, _ = fs.split_path(store_path(uri, name))
        try:
            answer = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        info, body = _s3_info(answer), answer["Body"]
        try:
            if info["size"] > min(block, left):
                return info, ""
            left -= info["size"]
            digest = hashlib.sha256()
            with (dest / name).open("wb") as sink:
                while chunk := await body.read(_CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
        finally:
            body.close()
        if (dest / name).stat().st_size != info["size"]:
            raise StoreUnreachable(f"{name}: cut short")
        return info, digest.hexdigest()

    async def get_all() -> list[tuple[Mapping[str, Any], str] | BaseException | None]:
        return await asyncio.gather(*(get(name) for name in _BY_NAME), return_exceptions=True)

    answers = fsspec.asyn.sync(fs.loop, get_all)
    found: dict[str, tuple[Mapping[str, Any], str]] = {}
    for name, answer in zip(_BY_NAME, answers, strict=True):
        if isinstance(answer, BaseException):
            raise answer
        if answer is not None:
            found[name] = answer
    return found


def _found_by_name(names: Collection[str]) -> bool:
    """Whether a look-up by the standard names found a PEFT folder with safetensors
    weights; else the folder is listed (an unknown name, ``.bin`` weights, a broken
    folder)."""
    return CONFIG_FILE in names and WEIGHTS_FILES[0] in names


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
