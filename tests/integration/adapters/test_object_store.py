"""The object-store tier against a real S3 server over HTTP: the resolver lists and
downloads through s3fs into the node's disk cache, once per node, and fails cleanly."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import cast

import pytest
from transformers import AutoTokenizer

from producer.settings import DEMO_DIR
from schemas import ErrorType, Message
from schemas.adapter_uris import AdapterUri, parse_adapter_uri
from tests.integration.adapters.conftest import DEMO_ADAPTERS, S3Server
from workers.adapters.catalogue import AdapterCatalogue
from workers.adapters.disk_cache import DiskCache
from workers.adapters.registry import AdapterRegistry
from workers.adapters.remote import Fetched, RemoteFolder, RemoteStore
from workers.adapters.resolved import ResolvedAdapter
from workers.adapters.resolver import AdapterResolver, RetryPolicy
from workers.engine.backend import Backend
from workers.engine.prompts import encode_request
from workers.engine.requests import GenerationRequest
from workers.errors import EngineError
from workers.serve.replica_adapters import ReplicaAdapters

DEMO = sorted(path.name for path in DEMO_ADAPTERS.iterdir())


def resolver(
    source: str,
    cache: Path,
    *,
    sync_s: float = 60.0,
    relist_s: float = 300.0,
    max_bytes: int = 2**30,
    store: RemoteStore | None = None,
    **extra: object,
) -> AdapterResolver:
    """A replica's resolver with no local adapters: everything comes from ``source``
    (revalidated by ``HEAD`` between full listings ``relist_s`` apart, as by default)."""
    return AdapterResolver(
        AdapterCatalogue(AdapterRegistry({}, None), source=parse_adapter_uri(source)),
        store=store or RemoteStore(timeout_s=2.0, max_bytes=max_bytes),
        disk=DiskCache(cache, budget_bytes=2**30),
        sync_s=sync_s,
        relist_s=relist_s,
        miss_ttl_s=30.0,
        max_downloads=4,
        retry=RetryPolicy(attempts=2, backoff_s=0.05),
        **extra,  # type: ignore[arg-type]
    )


def upload_demo(s3: S3Server, copies: int) -> tuple[str, dict[str, str]]:
    """The demo adapters under ``copies`` names each; the bucket and name -> demo adapter."""
    bucket = s3.bucket()
    names = {}
    for index in range(copies):
        for demo in DEMO:
            name = f"{demo}-{index:03d}"
            s3.upload(bucket, f"adapters/{name}", DEMO_ADAPTERS / demo)
            names[name] = demo
    return bucket, names


async def test_each_adapter_is_downloaded_once_per_node(s3: S3Server, tmp_path: Path) -> None:
    bucket, names = upload_demo(s3, 3)
    source = f"s3://{bucket}/adapters/"
    first, second = resolver(source, tmp_path), resolver(source, tmp_path)
    try:

        async def use(replica: AdapterResolver, name: str) -> bytes:
            async with replica.use(name) as adapter:
                return (adapter.folder / "adapter_model.safetensors").read_bytes()

        jobs = [use(replica, name) for name in names for replica in (first, second, first)]
        weights = await asyncio.gather(*jobs)
        for (name, _replica), data in zip(
            [(n, r) for n in names for r in range(3)], weights, strict=True
        ):
            demo = names[name]
            assert data == (DEMO_ADAPTERS / demo / "adapter_model.safetensors").read_bytes()
        downloads = first.disk_stats().downloads + second.disk_stats().downloads
        assert downloads == len(names)  # two replicas of one node: one download each
        assert first.disk_stats().download_failures == 0
    finally:
        first.close()
        second.close()


async def test_unknown_names_fail_and_are_remembered(s3: S3Server, tmp_path: Path) -> None:
    bucket, _ = upload_demo(s3, 1)
    replica = resolver(f"s3://{bucket}/adapters", tmp_path)
    try:
        for name in ("nope", "nope", "../x", "a/b"):
            with pytest.raises(EngineError) as caught:
                async with replica.use(name):
                    pass
            assert caught.value.type in (ErrorType.UNKNOWN_ADAPTER, ErrorType.VALIDATION)
        assert replica.disk_stats().downloads == 0
    finally:
        replica.close()


async def settled(s3: S3Server, bucket: str, **expected: int) -> dict[str, int]:
    """The server's requests about ``bucket`` once they include ``expected`` (its log is
    written just after each answer)."""
    deadline = time.monotonic() + 10
    while True:
        counts = s3.requests(bucket)
        if all(counts[k] >= n for k, n in expected.items()) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.05)


async def test_a_folder_is_found_by_its_file_names_not_listed(s3: S3Server, tmp_path: Path) -> None:
    """A PEFT folder is looked up by its standard names (4, at once), with no listing
    (moto scans the whole bucket for one): the node's first look-up for a use is a
    ``GET`` of each, which brings the 2 files with it (no second round to download);
    a look-up that downloads nothing (``resolve``) or revalidates is a ``HEAD`` of each.
    A folder without those names (``.bin`` weights, an unknown name) is listed, as
    before, and an unknown name's miss is remembered. The same folder resolves to the
    same version when it is looked up again."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    config = (DEMO_ADAPTERS / "upper" / "adapter_config.json").read_bytes()
    client = s3.client()
    client.put_object(Bucket=bucket, Key="adapters/old/adapter_config.json", Body=config)
    client.put_object(Bucket=bucket, Key="adapters/old/adapter_model.bin", Body=b"weights")
    store = CountingStore(timeout_s=2.0, max_bytes=2**30)
    replica = resolver(f"s3://{bucket}/adapters", tmp_path, sync_s=0.1, relist_s=0, store=store)
    try:
        async with replica.use("tenant") as adapter:
            files = sorted(path.name for path in adapter.folder.iterdir())
            weights = (adapter.folder / "adapter_model.safetensors").read_bytes()
        assert files == ["MANIFEST.json", "adapter_config.json", "adapter_model.safetensors"]
        assert weights == (DEMO_ADAPTERS / "upper" / "adapter_model.safetensors").read_bytes()
        # 4 GETs: the 2 files, and the 2 optional names the folder does not hold
        assert await settled(s3, bucket, gets=4) == {"listings": 0, "heads": 0, "gets": 4}
        stats = replica.disk_stats()
        assert (stats.misses, stats.downloads, stats.hits) == (1, 1, 0)
        assert list((tmp_path / "tmp").iterdir()) == []  # nothing left half-way
        old = await replica.resolve("old")
        assert old.version != adapter.version
        assert (await settled(s3, bucket, listings=1))["listings"] == 1
        for _ in range(2):
            with pytest.raises(EngineError) as caught:
                await replica.resolve("nobody")
            assert caught.value.type is ErrorType.UNKNOWN_ADAPTER
        await asyncio.sleep(0.2)  # past the sync bound; relist_s=0: looked up in full
        async with replica.use("tenant") as again:
            assert again.key == adapter.key
        # 4 HEADs per look-up that brings nothing (old, nobody once: its miss is
        # remembered, tenant again), 4 GETs for tenant's first
        counts = await settled(s3, bucket, listings=2, heads=12)
        assert counts == {"listings": 2, "heads": 12, "gets": 4}
        assert store.listed == 4 and replica.disk_stats().downloads == 1
        assert replica.disk_stats().hits == 1  # the second use read the entry
    finally:
        replica.close()


async def test_a_file_too_large_to_stream_in_the_look_up_is_downloaded_after_it(
    s3: S3Server, tmp_path: Path
) -> None:
    """A file over s3fs's block size is not streamed by the look-up's ``GET`` (the tier
    downloads it in parts): the look-up then keeps nothing, and the folder is downloaded
    whole after it, as for a listed folder."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    store = RemoteStore(timeout_s=2.0, max_bytes=2**30)
    filesystem = store._filesystem("s3")  # fsspec's cached instance: put back below
    block = filesystem.default_block_size
    filesystem.default_block_size = 4096  # the config fits, the weights do not
    replica = resolver(f"s3://{bucket}/adapters", tmp_path, store=store)
    try:
        async with replica.use("tenant") as adapter:
            weights = (adapter.folder / "adapter_model.safetensors").read_bytes()
        assert weights == (DEMO_ADAPTERS / "upper" / "adapter_model.safetensors").read_bytes()
        # The look-up's 4 GETs, then the download's: the config, and the weights in parts
        counts = await settled(s3, bucket, gets=4 + 2 + 1)
        assert counts["listings"] == counts["heads"] == 0 and counts["gets"] > 4 + 2
        assert replica.disk_stats().downloads == 1
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        filesystem.default_block_size = block
        replica.close()


async def test_a_new_object_is_a_new_version(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    replica = resolver(f"s3://{bucket}/adapters", tmp_path, sync_s=3.0)
    try:
        async with replica.use("tenant") as old:
            assert (old.folder / "adapter_config.json").exists()
        s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "reverse")
        assert (await replica.resolve("tenant")).key == old.key  # within the sync bound
        await asyncio.sleep(3.1)
        async with replica.use("tenant") as new:
            assert new.version != old.version and new.folder != old.folder
            weights = (new.folder / "adapter_model.safetensors").read_bytes()
        assert weights == (DEMO_ADAPTERS / "reverse" / "adapter_model.safetensors").read_bytes()
        await asyncio.sleep(0.2)  # the old entry is discarded on the download threads
        assert not old.folder.exists()
    finally:
        replica.close()


async def test_bad_folders_fail_that_adapter_alone(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/good", DEMO_ADAPTERS / "upper")
    s3.client().put_object(Bucket=bucket, Key="adapters/noconfig/adapter_model.bin", Body=b"x")
    s3.client().put_object(Bucket=bucket, Key="adapters/noweights/adapter_config.json", Body=b"{}")
    replica = resolver(f"s3://{bucket}/adapters", tmp_path)
    small = resolver(f"s3://{bucket}/adapters", tmp_path / "small", max_bytes=1000)
    try:
        for who, name, fragment in [
            (replica, "noconfig", "no adapter_config.json"),
            (replica, "noweights", "no adapter_model"),
            (small, "good", "over LORAQ_MAX_ADAPTER_MB"),
        ]:
            with pytest.raises(EngineError) as caught:
                async with who.use(name):
                    pass
            assert caught.value.type is ErrorType.INCOMPATIBLE_ADAPTER
            assert fragment in caught.value.message
            assert "loraq-test-secret" not in caught.value.message
        async with replica.use("good") as adapter:
            assert adapter.folder.is_dir()
    finally:
        replica.close()
        small.close()


def test_a_look_up_writes_no_more_than_the_size_bound_of_a_folder_over_it(
    s3: S3Server, tmp_path: Path
) -> None:
    """Each file of the folder is under the bound, their sum is not: the look-up's
    ``GET``s stream no more than the bound into the caller's folder before the folder is
    refused (a ``HEAD`` refused it unread)."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/good", DEMO_ADAPTERS / "upper")
    sizes = [path.stat().st_size for path in (DEMO_ADAPTERS / "upper").iterdir()]
    bound = max(sizes) + 1  # each file fits, the two do not
    assert sum(sizes) > bound
    store = RemoteStore(timeout_s=2.0, max_bytes=bound)
    uri = parse_adapter_uri(f"s3://{bucket}/adapters/good")
    with pytest.raises(EngineError) as caught:
        store.fetch_folder(uri, tmp_path)
    assert "over LORAQ_MAX_ADAPTER_MB" in caught.value.message
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) <= bound


async def test_a_damaged_entry_is_fetched_again(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "title")
    first = resolver(f"s3://{bucket}/adapters", tmp_path)
    async with first.use("tenant") as adapter:
        folder = adapter.folder
    first.close()
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short, as by a crash
    # A replica that starts afterwards (a new process checks the entry once).
    second = resolver(f"s3://{bucket}/adapters", tmp_path)
    try:
        async with second.use("tenant") as again:
            data = (again.folder / "adapter_model.safetensors").read_bytes()
        assert data == (DEMO_ADAPTERS / "title" / "adapter_model.safetensors").read_bytes()
        assert second.disk_stats().corrupt_entries >= 1 and second.disk_stats().downloads == 1
        manifest = json.loads((again.folder / "MANIFEST.json").read_text())
        assert "loraq-test" not in json.dumps(manifest)  # no credential is stored
    finally:
        second.close()


async def test_a_store_outage_serves_what_is_cached_and_fails_the_rest_cleanly(
    s3: S3Server, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    for name in ("cached", "cold"):
        s3.upload(bucket, f"adapters/{name}", DEMO_ADAPTERS / "upper")
    replica = resolver(f"s3://{bucket}/adapters", tmp_path, sync_s=0.1)
    try:
        async with replica.use("cached"):
            pass
        s3.pause()
        try:
            await asyncio.sleep(0.2)  # the resolution of "cached" is past its sync bound
            async with replica.use("cached") as adapter:  # on this node's disk: served
                assert adapter.folder.is_dir()
            with pytest.raises(EngineError) as caught:
                async with replica.use("cold"):
                    pass
            assert caught.value.type is ErrorType.ADAPTER_UNAVAILABLE
            assert "unreachable" in caught.value.message
        finally:
            s3.resume()
        async with replica.use("cold") as adapter:  # back: fetched now
            assert adapter.folder.is_dir()
    finally:
        replica.close()


class CountingStore(RemoteStore):
    """The real store, counting the look-ups (with or without the files) and
    revalidations (a ``HEAD`` per file) this replica asked it for."""

    listed = 0
    checked = 0

    def list_folder(self, uri: AdapterUri) -> RemoteFolder | None:
        self.listed += 1
        return super().list_folder(uri)

    def fetch_folder(self, uri: AdapterUri, dest: Path) -> tuple[RemoteFolder | None, Fetched]:
        self.listed += 1
        return super().fetch_folder(uri, dest)

    def unchanged(self, folder: RemoteFolder) -> bool:
        self.checked += 1
        return super().unchanged(folder)


async def test_a_listing_is_shared_by_the_node_replicas(s3: S3Server, tmp_path: Path) -> None:
    """One listing per name per node per sync bound, whichever replica asked; a replica
    that read another's listing sees a new object as soon as the one that listed it."""
    bucket, names = upload_demo(s3, 2)
    source, sync_s = f"s3://{bucket}/adapters", 3.0
    stores = [CountingStore(timeout_s=2.0, max_bytes=2**30) for _ in range(2)]
    first, second = (resolver(source, tmp_path, sync_s=sync_s, store=s) for s in stores)
    try:
        for replica in (first, second, first):
            for name in names:
                async with replica.use(name):
                    pass
            with pytest.raises(EngineError):
                await replica.resolve("nope")
        assert stores[0].listed + stores[1].listed == len(names) + 2  # "nope": once each
        assert len(list((tmp_path / "listings").glob("*.json"))) == len(names)  # no misses
        listed_by_second = stores[1].listed
        s3.upload(bucket, "adapters/late", DEMO_ADAPTERS / "upper")
        listed_at = time.monotonic()
        await first.resolve("late")
        await asyncio.sleep(sync_s / 2)
        old = await second.resolve("late")  # the first's listing, read later
        s3.upload(bucket, "adapters/late", DEMO_ADAPTERS / "reverse")
        await asyncio.sleep(max(0.0, listed_at + sync_s + 0.1 - time.monotonic()))
        new = await second.resolve("late")  # its copy expires with the listing it read
        assert stores[1].listed == listed_by_second + 1
        assert new.version != old.version
    finally:
        first.close()
        second.close()


async def test_a_file_deleted_after_the_listing_fails_adapter_unavailable(
    s3: S3Server, tmp_path: Path
) -> None:
    """Gone between the listing and the download: the job is retried later (by then the
    listing is new), not failed as an internal error."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    replica = resolver(f"s3://{bucket}/adapters", tmp_path)
    try:
        await replica.resolve("tenant")  # listed, nothing downloaded
        s3.client().delete_object(Bucket=bucket, Key="adapters/tenant/adapter_model.safetensors")
        with pytest.raises(EngineError) as caught:
            async with replica.use("tenant"):
                pass
        assert caught.value.type is ErrorType.ADAPTER_UNAVAILABLE
        assert "gone since the listing" in caught.value.message
        assert list((tmp_path / "entries").iterdir()) == []
    finally:
        replica.close()


async def test_an_adapters_chat_template_comes_from_its_cached_folder(
    s3: S3Server, tmp_path: Path
) -> None:
    """The template an adapter's store folder carries renders its messages; read from
    the disk cache's copy (the only folder a backend is given), not from the store."""
    bucket = s3.bucket()
    own = tmp_path / "own"
    shutil.copytree(DEMO_ADAPTERS / "upper", own)
    (own / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}>"
    )
    s3.upload(bucket, "adapters/own", own)
    s3.upload(bucket, "adapters/plain", DEMO_ADAPTERS / "upper")
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "model")
    replica = resolver(f"s3://{bucket}/adapters", tmp_path / "cache")
    messages = [Message(role="user", content="hi")]
    try:
        encoded = {}
        for name in ("own", "plain"):
            async with replica.use(name) as adapter:
                assert adapter.folder.is_relative_to(tmp_path / "cache")
                request = GenerationRequest(adapter=name, messages=messages, resolved=adapter)
                encoded[name] = encode_request(
                    tokenizer, request, max_input_tokens=256, max_new_tokens=64
                )
    finally:
        replica.close()
    expected = tokenizer("<user>hi>", add_special_tokens=False)["input_ids"]
    assert encoded["own"] == expected
    base = tokenizer.apply_chat_template(
        [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
    )
    assert encoded["plain"] == tokenizer(base, add_special_tokens=False)["input_ids"] != expected


class Prefetches:
    """The backend's side of a prefetch, recorded (the tiers below the disk are not what
    these tests are about)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def prefetch(self, adapter: ResolvedAdapter) -> None:
        self.keys.append(adapter.key)


async def prefetched(adapters: ReplicaAdapters, backend: Prefetches, names: list[str]) -> None:
    """``adapters.prefetch(names)`` and its background work done."""
    done = len(backend.keys) + len(names)
    adapters.prefetch(names)
    deadline = time.monotonic() + 10
    while len(backend.keys) < done and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(backend.keys) == done


async def test_a_prefetch_revalidates_an_adapter_past_the_sync_bound_ahead_of_its_job(
    s3: S3Server, tmp_path: Path
) -> None:
    """A hint for a waiting job's adapter that the store last vouched for more than
    ``sync_s`` ago revalidates it (a ``HEAD`` of each file) in the background, so the
    job, starting within the bound, asks the store nothing; a hint within the bound asks
    nothing either."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    store = CountingStore(timeout_s=2.0, max_bytes=2**30)
    sync_s = 1.0
    replica = resolver(f"s3://{bucket}/adapters", tmp_path, sync_s=sync_s, store=store)
    backend = Prefetches()
    adapters = ReplicaAdapters(replica, cast(Backend, backend))
    try:
        async with replica.use("tenant"):
            pass
        await prefetched(adapters, backend, ["tenant"])
        assert (store.listed, store.checked) == (1, 0)  # within the bound
        await asyncio.sleep(sync_s + 0.1)
        await prefetched(adapters, backend, ["tenant"])
        assert (store.listed, store.checked) == (1, 1)  # revalidated by the hint
        async with replica.use("tenant") as adapter:
            assert adapter.key == backend.keys[-1]
        assert (store.listed, store.checked) == (1, 1)  # the job asked nothing
    finally:
        replica.close()


async def test_relist_0_looks_a_folder_up_in_full_every_period(
    s3: S3Server, tmp_path: Path
) -> None:
    """``LORAQ_ADAPTER_RELIST_S=0``: no ``HEAD`` revalidation, a full look-up each time."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    store = CountingStore(timeout_s=2.0, max_bytes=2**30)
    relisting = resolver(
        f"s3://{bucket}/adapters", tmp_path / "relist", sync_s=0.2, relist_s=0, store=store
    )
    try:
        for _ in range(2):
            async with relisting.use("tenant"):
                pass
            await asyncio.sleep(0.3)
        assert (store.listed, store.checked) == (2, 0)
    finally:
        relisting.close()


async def test_an_object_replaced_in_place_is_seen_within_the_sync_bound(
    s3: S3Server, tmp_path: Path
) -> None:
    """Between full listings a known folder is revalidated by a ``HEAD`` of each file: an
    object replaced under the same key with bytes of the same size (only its ETag
    changes) is a new version for every resolution later than the sync bound, and the
    changed folder is listed again at once."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    store = CountingStore(timeout_s=2.0, max_bytes=2**30)
    sync_s = 0.5
    replica = resolver(f"s3://{bucket}/adapters", tmp_path, sync_s=sync_s, store=store)
    key = "adapters/tenant/adapter_model.safetensors"
    try:
        async with replica.use("tenant") as old:
            pass
        await asyncio.sleep(sync_s + 0.1)
        assert (await replica.resolve("tenant")).key == old.key
        assert (store.listed, store.checked) == (1, 1)  # revalidated, not listed
        weights = bytearray((DEMO_ADAPTERS / "upper" / "adapter_model.safetensors").read_bytes())
        weights[-1] ^= 0xFF  # the last weight's last byte: same size, still a safetensors file
        s3.client().put_object(Bucket=bucket, Key=key, Body=bytes(weights))
        replaced = time.monotonic()
        await asyncio.sleep(sync_s + 0.1)
        async with replica.use("tenant") as new:
            assert new.version != old.version
            assert (new.folder / "adapter_model.safetensors").read_bytes() == weights
        assert time.monotonic() - replaced < 10 * sync_s  # well within the relist bound
        assert (store.listed, store.checked) == (2, 2)  # the HEAD saw it, then a listing
        s3.client().delete_object(Bucket=bucket, Key=key)
        await asyncio.sleep(sync_s + 0.1)
        with pytest.raises(EngineError) as caught:  # a file gone: listed again at once
            await replica.resolve("tenant")
        assert caught.value.type is ErrorType.INCOMPATIBLE_ADAPTER
        assert (store.listed, store.checked) == (3, 3)
    finally:
        replica.close()


async def test_a_file_added_beside_unchanged_ones_is_seen_by_the_relist_bound(
    s3: S3Server, tmp_path: Path
) -> None:
    """A ``HEAD`` of the known files cannot see a file added beside them: the folder is
    listed in full again once its last listing is ``relist_s`` old, and the added file is
    part of every resolution after that, never later."""
    bucket = s3.bucket()
    s3.upload(bucket, "adapters/tenant", DEMO_ADAPTERS / "upper")
    store = CountingStore(timeout_s=2.0, max_bytes=2**30)
    sync_s, relist_s = 0.3, 2.0
    replica = resolver(
        f"s3://{bucket}/adapters", tmp_path, sync_s=sync_s, relist_s=relist_s, store=store
    )
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    try:
        async with replica.use("tenant") as old:
            assert not (old.folder / "chat_template.jinja").exists()
        s3.client().put_object(
            Bucket=bucket, Key="adapters/tenant/chat_template.jinja", Body=template.encode()
        )
        added = time.monotonic()
        versions = []
        while time.monotonic() - added < relist_s + 1.0:
            versions.append((time.monotonic() - added, (await replica.resolve("tenant")).key))
            await asyncio.sleep(0.1)
        old_until = max(at for at, key in versions if key == old.key)
        new_from = min(at for at, key in versions if key != old.key)
        assert sync_s < old_until < new_from <= relist_s + 0.2  # HEADs alone, then the listing
        assert all(key != old.key for at, key in versions if at >= new_from)
        assert store.listed == 2 and store.checked >= 2
        async with replica.use("tenant") as new:
            assert (new.folder / "chat_template.jinja").read_text() == template
    finally:
        replica.close()
