"""Adapter URIs: where an adapter's files live outside the workers' own folders.

A registration (``{"uri": …}`` in ``{P}:adapters``) or the source root
(``LORAQ_ADAPTER_SOURCE``) names an object-store folder, a Hub repository or an HTTP
folder. The text is checked here, before anything opens it, and kept strict: a client's
or an operator's string must never carry credentials (they would be stored in Redis and
echoed in errors), step out of its folder, or reach a scheme nobody configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_URI_CHARS = 2048
# Object stores and plain HTTP; ``hf`` is the Hugging Face Hub (``hf://org/repo@rev/sub``).
SCHEMES = ("s3", "gs", "az", "hf", "http", "https")
_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
# What a path segment may hold: no '%' (encoded traversal), no '\\', no '?', no '#'.
_SEGMENT = re.compile(r"^[A-Za-z0-9._~+=,@-]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(\.{_LABEL}){{0,126}}(:[0-9]{{1,5}})?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidUri(ValueError):
    """A URI that names no usable adapter location; the message says why."""


@dataclass(frozen=True)
class AdapterUri:
    """A checked adapter location: ``scheme://`` then ``segments`` joined by '/'.

    ``revision`` is a Hub revision (``hf`` only); for ``http(s)`` the first segment is the
    host (and port).
    """

    scheme: str
    segments: tuple[str, ...]
    revision: str | None = None

    def __str__(self) -> str:
        if self.scheme == "hf" and self.revision is not None:
            repo = "/".join(self.segments[:2]) + "@" + self.revision
            return "hf://" + "/".join((repo, *self.segments[2:]))
        return f"{self.scheme}://" + "/".join(self.segments)

    def child(self, name: str) -> AdapterUri:
        """The folder ``name`` under this one (``name`` must be a checked adapter name)."""
        if not _SEGMENT.fullmatch(name) or name in (".", ".."):
            raise InvalidUri(f"{name!r} cannot be a folder name")
        return AdapterUri(self.scheme, (*self.segments, name), self.revision)


def parse_adapter_uri(text: str) -> AdapterUri:
    """``text`` as an :class:`AdapterUri`; :class:`InvalidUri` says what is wrong.

    A trailing '/' is allowed and dropped. Refused: other schemes, credentials
    (``user:pass@``), a query or fragment (a presigned URL carries credentials), empty,
    '.' or '..' segments, percent-encoding, backslashes and control characters.
    """
    if not isinstance(text, str) or not text:
        raise InvalidUri("an adapter URI must be a non-empty string")
    if len(text) > MAX_URI_CHARS:
        raise InvalidUri(f"an adapter URI must be at most {MAX_URI_CHARS} characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in text):
        raise InvalidUri("an adapter URI must not contain spaces or control characters")
    match = _SCHEME.fullmatch(text)
    if match is None or match["scheme"] not in SCHEMES:
        raise InvalidUri(f"an adapter URI must start with one of {', '.join(SCHEMES)} + '://'")
    scheme, rest = match["scheme"], match["rest"]
    if "?" in rest or "#" in rest:
        raise InvalidUri("an adapter URI must not have a query or fragment (credentials?)")
    if "@" in rest.split("/", 1)[0] and scheme != "hf":
        raise InvalidUri(
            "an adapter URI must not carry credentials: the workers take them from the "
            "environment (AWS_ACCESS_KEY_ID, HF_TOKEN, …)"
        )
    segments = rest.removesuffix("/").split("/")
    if scheme == "hf":
        return _hub_uri(segments)
    for segment in segments[1:]:
        _check_segment(segment)
    if scheme in ("http", "https"):
        if not _HOST.fullmatch(segments[0]):
            raise InvalidUri(f"{segments[0]!r} is not a host name")
    elif not _BUCKET.fullmatch(segments[0]):
        raise InvalidUri(f"{segments[0]!r} is not a bucket or container name")
    return AdapterUri(scheme, tuple(segments))


def _check_segment(segment: str) -> None:
    if segment in ("", ".", ".."):
        raise InvalidUri("an adapter URI must not have empty, '.' or '..' path segments")
    if not _SEGMENT.fullmatch(segment):
        raise InvalidUri(
            f"path segment {segment[:64]!r} may hold only letters, digits and ._~+=,@-"
        )


def _hub_uri(segments: list[str]) -> AdapterUri:
    """``org/repo[@revision][/subfolder…]``."""
    if len(segments) < 2:
        raise InvalidUri("a Hub URI is hf://org/repo[@revision][/subfolder]")
    org, repo = segments[0], segments[1]
    repo, _, revision = repo.partition("@")
    if not _HUB_ID.fullmatch(org) or not _HUB_ID.fullmatch(repo):
        raise InvalidUri("a Hub URI is hf://org/repo[@revision][/subfolder]")
    if revision and not _REVISION.fullmatch(revision):
        raise InvalidUri(f"{revision[:64]!r} is not a Hub revision")
    for segment in segments[2:]:
        _check_segment(segment)
    return AdapterUri("hf", (org, repo, *segments[2:]), revision or None)
