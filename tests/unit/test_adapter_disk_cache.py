"""The node's disk tier: the pure eviction policy, and the cache on real files with real
file locks (another process holds entries the way a second replica would)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from workers.adapters.disk_cache import MANIFEST, DiskCache, entry_key
from workers.adapters.disk_policy import DiskEntry, victims


def test_victims_are_the_least_recently_used_free_entries() -> None:
    entries = [
        DiskEntry("old", 40, 1.0, in_use=False),
        DiskEntry("held", 40, 0.5, in_use=True),
        DiskEntry("new", 40, 3.0, in_use=False),
    ]
    assert victims(entries, incoming_bytes=0, budget_bytes=200) == []
    assert victims(entries, incoming_bytes=40, budget_bytes=130) == [("old", 40)]
    # Held entries are never chosen, even if the budget stays exceeded.
    assert victims(entries, incoming_bytes=100, budget_bytes=50) == [("old", 40), ("new", 40)]


def writer(size: int, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    def write(dest: Path) -> dict[str, str]:
        import hashlib

        if calls is not None:
            calls.append(1)
        data = b"x" * size
        (dest / "adapter_model.safetensors").write_bytes(data)
        (dest / "adapter_config.json").write_text("{}")
        return {
            "adapter_model.safetensors": hashlib.sha256(data).hexdigest(),
            "adapter_config.json": hashlib.sha256(b"{}").hexdigest(),
        }

    return write


def test_an_entry_put_by_a_look_up_is_one_miss_and_its_first_read_no_hit(tmp_path: Path) -> None:
    """Files a look-up fetched on its way go in whole from a staging folder the cache
    gave, which is gone afterwards; the look-up's own first read of them is its miss's,
    not a hit; a second put of the same entry writes nothing."""
    cache = DiskCache(tmp_path, budget_bytes=10_000)
    key, calls = entry_key("s3://bucket/a", "v1"), []
    with cache.staging() as staging:
        assert staging.parent == tmp_path / "tmp" and staging.is_dir()
        cache.put(key, "s3://bucket/a", 100, writer(100, calls), fetched_s=0.25)
    assert not staging.exists() and list((tmp_path / "tmp").iterdir()) == []
    cache.put(key, "s3://bucket/a", 100, writer(100, calls), fetched_s=0.25)
    assert calls == [1]
    for _ in range(2):
        lease = cache.lease(key)
        assert lease is not None
        lease.close()
    stats = cache.stats
    assert (stats.misses, stats.downloads, stats.hits) == (1, 1, 1)
    assert stats.download_s_total >= 0.25  # the look-up's time is the download's


def test_an_entry_is_fetched_once_then_leased(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, budget_bytes=10_000)
    calls: list[int] = []
    key = entry_key("s3://bucket/a", "v1")
    assert cache.lease(key) is None
    lease = cache.fetch(key, "s3://bucket/a", 100, writer(100, calls))
    lease.close()
    again = cache.fetch(key, "s3://bucket/a", 100, writer(100, calls))
    again.close()
    assert calls == [1] and cache.stats.downloads == 1
    held = cache.lease(key)
    assert held is not None and (held.folder / MANIFEST).exists()
    held.close()


def test_a_failed_download_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, budget_bytes=10_000)

    def broken(dest: Path) -> dict[str, str]:
        (dest / "adapter_config.json").write_text("{")
        raise OSError("connection reset")

    with pytest.raises(OSError):
        cache.fetch(entry_key("s3://b/x", "v"), "s3://b/x", 10, broken)
    assert list((tmp_path / "entries").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def _hold(root: str, key: str, ready: multiprocessing.Event, done: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    cache = DiskCache(Path(root), budget_bytes=10_000)
    lease = cache.lease(key)
    assert lease is not None
    ready.set()  # type: ignore[attr-defined]
    done.wait(30)  # type: ignore[attr-defined]
    lease.close()


def test_eviction_skips_what_another_process_reads(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, budget_bytes=250)
    held, free = entry_key("s3://b/held", "v"), entry_key("s3://b/free", "v")
    cache.fetch(held, "s3://b/held", 102, writer(100)).close()
    time.sleep(0.01)
    cache.fetch(free, "s3://b/free", 102, writer(100)).close()
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    reader = context.Process(target=_hold, args=(str(tmp_path), held, ready, done))
    reader.start()
    try:
        assert ready.wait(60)
        # Over budget: the least recently used entry is held by the reader, so the other
        # one goes.
        cache.fetch(entry_key("s3://b/new", "v"), "s3://b/new", 102, writer(100)).close()
        assert (tmp_path / "entries" / held).is_dir()
        assert not (tmp_path / "entries" / free).exists()
        assert cache.stats.evictions == 1
        assert not cache.discard(held)  # still read over there
    finally:
        done.set()
        reader.join(30)
    assert cache.discard(held)


def test_a_damaged_entry_is_not_leased(tmp_path: Path) -> None:
    key = entry_key("s3://b/x", "v")
    DiskCache(tmp_path, budget_bytes=10_000).fetch(key, "s3://b/x", 102, writer(100)).close()
    (tmp_path / "entries" / key / "adapter_model.safetensors").write_bytes(b"y" * 100)
    fresh = DiskCache(tmp_path, budget_bytes=10_000)  # a new process checks digests once
    assert fresh.lease(key) is None and fresh.stats.corrupt_entries == 1
    calls: list[int] = []
    fresh.fetch(key, "s3://b/x", 102, writer(100, calls)).close()
    assert calls == [1]


def test_downloads_of_dead_processes_are_swept(tmp_path: Path) -> None:
    DiskCache(tmp_path, budget_bytes=10)
    stale = tmp_path / "tmp" / "999999999-abcd"
    stale.mkdir()
    DiskCache(tmp_path, budget_bytes=10)
    assert not stale.exists()


def test_a_damaged_entry_is_replaced_only_once_its_reader_lets_go(tmp_path: Path) -> None:
    """A process that leased the entry before this one found it damaged (same bytes, so
    same digest, as far as it checked) keeps reading it until it lets go."""
    key = entry_key("s3://b/x", "v")
    DiskCache(tmp_path, budget_bytes=10_000).fetch(key, "s3://b/x", 102, writer(100)).close()
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    reader = context.Process(target=_hold, args=(str(tmp_path), key, ready, done))
    reader.start()
    try:
        assert ready.wait(60)
        (tmp_path / "entries" / key / "adapter_model.safetensors").write_bytes(b"y" * 100)
        fresh = DiskCache(tmp_path, budget_bytes=10_000)
        fetching = threading.Thread(
            target=lambda: fresh.fetch(key, "s3://b/x", 102, writer(100)).close()
        )
        fetching.start()
        fetching.join(1.0)
        assert fetching.is_alive()  # waiting for the reader, its files untouched
        assert (tmp_path / "entries" / key / "adapter_model.safetensors").read_bytes() == b"y" * 100
    finally:
        done.set()
        reader.join(30)
    fetching.join(30)
    assert not fetching.is_alive() and fresh.stats.downloads == 1
    assert (tmp_path / "entries" / key / "adapter_model.safetensors").read_bytes() == b"x" * 100


def test_the_budget_counts_every_process_entries_and_only_those_there(tmp_path: Path) -> None:
    """The bytes in use, sized from each entry's manifest once per process: an entry
    another process put in or deleted since counts, or stops counting, at the next
    download."""
    cache, other = (DiskCache(tmp_path, budget_bytes=10_000) for _ in range(2))
    keys = [entry_key(f"s3://b/{name}", "v") for name in ("a", "b", "c")]
    cache.fetch(keys[0], "s3://b/a", 102, writer(100)).close()
    other.fetch(keys[1], "s3://b/b", 1_002, writer(1_000)).close()
    cache.fetch(keys[2], "s3://b/c", 102, writer(100)).close()
    assert cache.stats.bytes_used == 102 + 1_002 + 102
    assert other.discard(keys[1])
    cache.fetch(entry_key("s3://b/d", "v"), "s3://b/d", 102, writer(100)).close()
    assert cache.stats.bytes_used == 3 * 102
