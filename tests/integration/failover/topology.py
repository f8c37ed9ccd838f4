"""Real Redis topologies for the failover tests: a Sentinel-managed primary with a replica,
and a three-primary Cluster, each from the ``redis-server`` binary on free loopback ports.

Every process is started by the fixture that owns the topology and stopped (SIGKILL if
SIGTERM is not enough) when it ends, whatever the test did to it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import redis
from typing_extensions import Self

from producer.embedded import free_port

SERVICE = "loraqmain"
# Sentinel declares the primary down after this long without an answer; the promotion
# follows within a second or two on loopback.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
START_TIMEOUT_S = 15.0
# Keys moved by one MIGRATE while a slot migrates.
MIGRATE_BATCH = 200


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed")
    return found


@dataclass
class RedisProcess:
    """One ``redis-server`` (or sentinel) child process with its own folder."""

    folder: Path
    args: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> RedisProcess:
        """Start with ``args`` and ``extra`` (for this start only); wait for PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [server_binary(), *self.args, *extra]
        argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.folder / "server.log").read_text()[-2000:]
                raise RuntimeError(f"redis on port {self.port} did not start: {tail}")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1.0)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1.0, socket_timeout=5.0)

    def kill(self) -> None:
        """SIGKILL: what a crashed machine looks like (nothing flushed, no goodbye)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    while True:
        port = free_port()
        if port <= 55535 and port_free(port + 10000):
            return port


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def node_id(node: RedisProcess) -> str:
    with node.client() as client:
        return str(client.execute_command("CLUSTER", "MYID").decode())


def data_node(folder: Path, *extra: str) -> RedisProcess:
    """A data node as production runs it: AOF every second, no eviction."""
    args = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
    # A replica's first sync starts at once (Redis waits 5 s by default for more replicas).
    args += ["--maxmemory-policy", "noeviction", "--repl-diskless-sync-delay", "0", *extra]
    return RedisProcess(folder, args)


class Topology(Protocol):
    def start(self) -> Self: ...

    def stop(self) -> None: ...


T = TypeVar("T", bound=Topology)


@contextmanager
def running(topology: T) -> Iterator[T]:
    """``topology`` started, and stopped however the block ends (a failed start too:
    what had started by then is stopped)."""
    try:
        yield topology.start()
    finally:
        topology.stop()


@dataclass
class SentinelSet:
    """A primary, one replica and three sentinels watching them as :data:`SERVICE`."""

    root: Path
    primary: RedisProcess = field(init=False)
    replica: RedisProcess = field(init=False)
    sentinels: list[RedisProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.primary = data_node(self.root / "a")
        self.replica = data_node(self.root / "b")

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.start("--replicaof", "127.0.0.1", str(self.primary.port))
        for number in range(3):
            folder = self.root / f"sentinel{number}"
            folder.mkdir(parents=True)
            config = folder / "sentinel.conf"
            # Sentinel rewrites its own file as it learns the topology: one file each.
            config.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.sentinels.append(RedisProcess(folder, [str(config), "--sentinel"]).start())
        self.wait_replicated()
        return self

    @property
    def addresses(self) -> str:
        """``LORAQ_REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def primary_port(self) -> int | None:
        """The port the sentinels name as primary now (``None``: no majority answers)."""
        ports = []
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                ports.append(int(port))
            except (redis.RedisError, OSError, TypeError):
                continue
        return max(set(ports), key=ports.count) if ports else None

    def wait_promoted(self, old_port: int, timeout_s: float = 30.0) -> float:
        """Seconds until the sentinels name another primary than ``old_port``."""
        started = time.monotonic()
        while self.primary_port() in (None, old_port):
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"no promotion within {timeout_s}s")
            time.sleep(0.05)
        return time.monotonic() - started

    def wait_replicated(self, timeout_s: float = 30.0) -> None:
        """Until the primary of the moment has a replica online."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None:
                try:
                    with redis.Redis(port=port, socket_timeout=1.0) as client:
                        replica = client.info("replication").get("slave0", {})
                        if replica.get("state") == "online":
                            return
                except (redis.RedisError, OSError):
                    pass
            time.sleep(0.1)
        raise AssertionError(f"no replica online within {timeout_s}s")

    def restart_as_replica(self, node: RedisProcess) -> None:
        """Start a killed node again as a replica of the primary of the moment, as an
        operator's restart does (left alone, a returning old primary is made a replica
        by the sentinels only after about 8 s of reporting itself primary)."""
        port = self.primary_port()
        assert port is not None and port != node.port
        node.start("--replicaof", "127.0.0.1", str(port))

    def stop(self) -> None:
        for process in [*self.sentinels, self.primary, self.replica]:
            process.stop()


@dataclass
class Cluster:
    """Three primaries (no replicas), built by ``redis-cli --cluster create``."""

    root: Path
    nodes: list[RedisProcess] = field(default_factory=list)

    def start(self) -> Cluster:
        for number in range(3):
            node = data_node(
                self.root / f"n{number}",
                "--cluster-enabled", "yes",
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            node.port = cluster_port()
            self.nodes.append(node.start())
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                with node.client() as client:
                    states.append(client.execute_command("CLUSTER", "INFO").decode())
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(0.1)
        raise AssertionError("the cluster did not reach cluster_state:ok")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def redirections(self, node: RedisProcess) -> dict[str, int]:
        """How many MOVED, ASK and TRYAGAIN replies ``node`` has sent since it started."""
        with node.client() as client:
            stats = client.info("errorstats")
        return {
            kind: int(stats.get(f"errorstat_{kind}", {}).get("count", 0))
            for kind in ("MOVED", "ASK", "TRYAGAIN")
        }

    def owner(self, slot: int) -> RedisProcess:
        """The node that serves ``slot`` now."""
        with self.nodes[0].client() as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        port = next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))
        return next(node for node in self.nodes if node.port == port)

    def migrate(self, slot: int, target: RedisProcess) -> int:
        """Move ``slot`` and its keys to ``target`` with the steps of the Redis Cluster
        specification (IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE), while
        clients keep using it; returns how many keys moved."""
        source = self.owner(slot)
        source_id, target_id = node_id(source), node_id(target)
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            # The target first, so that no node sends clients to a source that has let go.
            for node in [target, source, *(n for n in self.nodes if n not in (source, target))]:
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
