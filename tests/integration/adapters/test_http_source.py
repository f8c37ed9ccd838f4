"""An HTTP folder as the source: a local HTTP server serves the demo adapters' folders,
and the resolver probes the PEFT file names (HTTP cannot list) and downloads them."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import ErrorType
from schemas.adapter_uris import parse_adapter_uri
from tests.integration.adapters.conftest import DEMO_ADAPTERS
from workers.adapters.catalogue import AdapterCatalogue
from workers.adapters.disk_cache import DiskCache
from workers.adapters.registry import AdapterRegistry
from workers.adapters.remote import RemoteStore
from workers.adapters.resolver import AdapterResolver, RetryPolicy
from workers.errors import EngineError

pytest.importorskip("aiohttp")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A threaded HTTP server on a free loopback port over a folder of adapters."""
    root = tmp_path / "www"
    shutil.copytree(DEMO_ADAPTERS, root / "adapters")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/adapters", root
    server.shutdown()
    server.server_close()


async def test_an_http_folder_is_fetched_and_versioned(
    http_root: tuple[str, Path], tmp_path: Path
) -> None:
    source, root = http_root
    resolver = AdapterResolver(
        AdapterCatalogue(AdapterRegistry({}, None), source=parse_adapter_uri(source)),
        store=RemoteStore(timeout_s=5.0, max_bytes=2**30),
        disk=DiskCache(tmp_path / "disk", budget_bytes=2**30),
        sync_s=0.0,
        miss_ttl_s=0.0,
        max_downloads=2,
        retry=RetryPolicy(attempts=1),
    )
    try:
        async with resolver.use("upper") as adapter:
            data = (adapter.folder / "adapter_model.safetensors").read_bytes()
        assert data == (DEMO_ADAPTERS / "upper" / "adapter_model.safetensors").read_bytes()
        with pytest.raises(EngineError) as caught:
            async with resolver.use("nope"):
                pass
        assert caught.value.type is ErrorType.UNKNOWN_ADAPTER
        # New bytes at the same URL: a new version (size or Last-Modified changed).
        shutil.copyfile(
            DEMO_ADAPTERS / "reverse" / "adapter_model.safetensors",
            root / "adapters" / "upper" / "adapter_model.safetensors",
        )
        async with resolver.use("upper") as again:
            assert again.version != adapter.version
    finally:
        resolver.close()
