"""Adapter names and URIs a client or operator may send: each hostile one is refused with
a clear error, and nothing a refused or accepted one names can escape its folder."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.adapter_uris import InvalidUri, parse_adapter_uri
from schemas.adapters import AdapterRegistration, InvalidRegistration, parse_registration
from workers.adapters.catalogue import AdapterCatalogue
from workers.adapters.registry import AdapterRegistry
from workers.adapters.remote import RemoteStore, StoreUnreachable, store_path
from workers.errors import EngineError


@pytest.mark.parametrize(
    ("text", "scheme", "canonical"),
    [
        ("s3://bucket/adapters/", "s3", "s3://bucket/adapters"),
        ("s3://my.bucket-1/a/b/sql-v2", "s3", "s3://my.bucket-1/a/b/sql-v2"),
        ("gs://bucket/x", "gs", "gs://bucket/x"),
        ("az://container/x", "az", "az://container/x"),
        ("hf://org/repo", "hf", "hf://org/repo"),
        ("hf://org/repo@v1.2/sub/dir", "hf", "hf://org/repo@v1.2/sub/dir"),
        ("https://host.example:8443/adapters", "https", "https://host.example:8443/adapters"),
    ],
)
def test_good_uris_parse(text: str, scheme: str, canonical: str) -> None:
    uri = parse_adapter_uri(text)
    assert uri.scheme == scheme and str(uri) == canonical


def test_a_hub_revision_is_kept_apart() -> None:
    uri = parse_adapter_uri("hf://org/repo@main/adapters")
    assert uri.revision == "main" and uri.segments == ("org", "repo", "adapters")
    assert str(uri.child("sql")) == "hf://org/repo@main/adapters/sql"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("file:///etc/passwd", "must start with"),
        ("/etc/passwd", "must start with"),
        ("s3://key:secret@bucket/x", "credentials"),
        ("https://user:pw@host/x", "credentials"),
        ("https://host/x?X-Amz-Signature=abc", "query"),
        ("https://host/x#frag", "query"),
        ("s3://bucket/../other", "'..'"),
        ("s3://bucket/a//b", "empty"),
        ("s3://bucket/a/%2e%2e/b", "may hold only"),
        ("s3://bucket/a\\b", "may hold only"),
        ("s3://b/x", "bucket"),
        ("s3://Bad_Bucket/x", "bucket"),
        ("s3://bucket/a b", "spaces"),
        ("s3://bucket/a\nb", "control"),
        ("hf://org", "hf://org/repo"),
        ("hf://org/repo@bad rev", "spaces"),
        ("ftp://host/x", "must start with"),
        ("s3://bucket/" + "a" * 3000, "at most"),
        ("", "non-empty"),
    ],
)
def test_hostile_uris_are_refused_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidUri) as caught:
        parse_adapter_uri(text)
    assert fragment in str(caught.value)


def test_a_registration_names_exactly_one_location() -> None:
    assert AdapterRegistration(uri="s3://bucket/x").location == "s3://bucket/x"
    for raw in ('{"path": "/a", "uri": "s3://bucket/x"}', "{}", '{"uri": "s3://k:s@bucket/x"}'):
        with pytest.raises(InvalidRegistration):
            parse_registration(raw)


TRICKS = st.sampled_from(
    ["..", ".", "/", "\\", "%2e", "%2f", "@", ":", "?", "#", "\x00", "\n", " ", "~", "//", "\u2215"]
)
HOSTILE_TEXT = st.lists(
    st.one_of(TRICKS, st.text(min_size=1, max_size=12)), min_size=1, max_size=12
).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["s3", "gs", "az", "hf", "https", "file", "ftp", "S3", "", "s3:"]),
    rest=HOSTILE_TEXT,
)
def test_a_uri_is_refused_or_stays_inside_its_folder(scheme: str, rest: str) -> None:
    try:
        uri = parse_adapter_uri(f"{scheme}://{rest}")
    except InvalidUri as exc:
        assert str(exc)
        return
    # Accepted: no segment can step out, and it says nothing it should not.
    assert all(segment not in ("", ".", "..") for segment in uri.segments)
    assert not any(char in str(uri) for char in "\\?#%\x00\n ")


@settings(max_examples=200, deadline=None)
@given(name=st.one_of(HOSTILE_TEXT, st.text(max_size=300)))
def test_a_name_is_refused_or_looked_up_only_as_a_name(name: str, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("roots")
    catalogue = AdapterCatalogue(
        AdapterRegistry({}, str(root)), source=parse_adapter_uri("s3://bucket/adapters")
    )
    try:
        location = asyncio.run(catalogue.locate(name))
    except EngineError as exc:
        assert exc.message and exc.type.value in ("validation", "unknown_adapter")
        return
    assert location.uri is not None
    assert location.uri.segments == ("bucket", "adapters", name)
    assert list(Path(root).iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("s3://bucket/a/b", "bucket/a/b/adapter_config.json"),
        ("gs://bucket/x", "bucket/x/adapter_config.json"),
        ("az://container/x", "container/x/adapter_config.json"),
        ("hf://org/repo", "org/repo/adapter_config.json"),
        ("hf://org/repo@v1.2/sub", "org/repo@v1.2/sub/adapter_config.json"),
        ("https://host:8443/x", "https://host:8443/x/adapter_config.json"),
    ],
)
def test_each_scheme_maps_to_its_library_path(text: str, path: str) -> None:
    """Up to the network call: the path fsspec's implementation of each scheme is given
    (the Hub's ``HfFileSystem`` pins the revision in it)."""
    assert store_path(parse_adapter_uri(text), "adapter_config.json") == path


def test_the_hub_offline_is_a_store_outage_not_an_unknown_adapter() -> None:
    """HF_HUB_OFFLINE=1 (as everywhere here): the Hub's own client refuses before any
    network call, and the job would be retried as ``adapter_unavailable``."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    store = RemoteStore(timeout_s=2.0, max_bytes=2**20)
    with pytest.raises(StoreUnreachable) as caught:
        store.list_folder(parse_adapter_uri("hf://org/repo@main/adapters/sql"))
    assert "OfflineModeIsEnabled" in str(caught.value)
