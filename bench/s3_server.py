"""moto's standalone S3 server (``moto_server``) over HTTP, as the S3 bench
(``bench/adapter_sources.py``) and the object-store tests (``tests/integration/adapters``)
start it, and the requests its log shows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# One request in the server's log (werkzeug's): method and path with its query.
REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/')


def binary() -> str:
    """The venv's own ``moto_server`` (the version the project pins), else the first on
    ``PATH``: another Python's may come first there."""
    own = Path(sys.executable).parent / "moto_server"
    return str(own) if own.exists() else shutil.which("moto_server") or str(own)


def spawn(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The server on the loopback ``port``, its request log written to ``log``."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def request_counts(text: str, bucket: str | None = None) -> dict[str, int]:
    """The requests in a stretch of the server's log (of ``bucket`` alone when given), by
    kind: listings (a ``GET`` of a bucket with a query), ``HEAD``s and ``GET``s of
    objects."""
    counts = {"listings": 0, "heads": 0, "gets": 0}
    for line in text.splitlines():
        found = REQUEST.search(line)
        if found is None:
            continue
        method, target = found.groups()
        path, _, query = target.partition("?")
        parts = path.strip("/").split("/")
        if bucket is not None and parts[0] != bucket:
            continue
        if method == "HEAD" and len(parts) > 1:
            counts["heads"] += 1
        elif method == "GET" and len(parts) == 1 and query:
            counts["listings"] += 1
        elif method == "GET" and len(parts) > 1:
            counts["gets"] += 1
    return counts


def wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    """Until the server at ``url`` answers (any HTTP answer), or ``RuntimeError``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {url}")
