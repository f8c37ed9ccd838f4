"""A real S3-compatible server over HTTP (moto's standalone ``moto_server``), started for
the session on the loopback port the workers' environment already names."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import s3_server
from tests.conftest import REPO

pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

DEMO_ADAPTERS = REPO / "demo" / "adapters"


@dataclass
class S3Server:
    """The running server and a client of it."""

    url: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path  # the server's request log

    def requests(self, bucket: str) -> dict[str, int]:
        """The requests the server answered about ``bucket`` so far, by kind: listings
        (a ``GET`` of the bucket with a query), ``HEAD``s and ``GET``s of objects."""
        return s3_server.request_counts(self.log.read_text(errors="replace"), bucket)

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url)

    def bucket(self) -> str:
        """A fresh bucket of the calling test's own."""
        name = f"loraq-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, bucket: str, prefix: str, folder: Path) -> None:
        client = self.client()
        for path in sorted(folder.iterdir()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}")

    def pause(self) -> None:
        """Unreachable, as in an outage: the process stops answering (its connections
        time out) and keeps its objects (moto's are in memory)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The S3 server at the address the workers' environment names (set before Ray
    starts, by ``tests/integration/conftest.py``)."""
    url = os.environ.get("AWS_ENDPOINT_URL", "")
    host, _, port = url.removeprefix("http://").partition(":")
    if host != "127.0.0.1" or not port.isdigit():
        pytest.skip(f"AWS_ENDPOINT_URL is {url!r}: these tests start their own S3 server")
    log = tmp_path_factory.mktemp("s3") / "requests.log"
    server = S3Server(url, s3_server.spawn(int(port), log), int(port), log)
    s3_server.wait_until_up(url)
    yield server
    server.stop()
