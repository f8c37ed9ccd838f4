"""What the Batch API tests watch while a hostile or large request runs: the gateway
replica's RSS, and how long ``/healthz`` (and another key's requests) take meanwhile.

The RSS counted is the replica's own: its resident pages less those of Ray's object
store. A request body reaches the replica from Serve's proxy in pieces, and pieces over
Ray's inline limit travel through the node's shared-memory object store (a
``/dev/shm/plasma…`` mapping in every Ray process); the pages of that mapping the replica
has touched stay resident in its RSS after the objects are freed. They belong to the
store, which reuses them and is bounded by its own size, not to the replica: counted,
they made a 32 MiB upload look like +38 MB kept.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import requests

from tests.integration.gateway.conftest import GatewayApp

MB = 1024 * 1024
POLL_S = 0.2
# A poll that does not answer counts as this long (it is over every bound anyway).
POLL_TIMEOUT_S = 5.0
RSS_SAMPLE_S = 0.05
# A new high of the plain RSS by more than this is walked for the own RSS.
RSS_STEP = 256 * 1024
SETTLE_S = 15.0
MIN_WATCH_S = 1.0
SLOW_S = 0.1


def own_rss(process: psutil.Process) -> int:
    """``process``'s resident bytes outside Ray's shared-memory object store."""
    shared = 0
    mapping = ""
    with open(f"/proc/{process.pid}/smaps") as smaps:
        for line in smaps:
            field, _, rest = line.partition(" ")
            if not field.endswith(":"):
                mapping = line  # a mapping's header: address range, …, path
            elif field == "Rss:" and "/plasma" in mapping:
                shared += int(rest.split()[0]) * 1024
    return int(process.memory_info().rss) - shared


def gateway_process(app: GatewayApp) -> psutil.Process:
    """The process of the app's gateway replica (Ray titles it ``ServeReplica:<app>:Gateway``)."""
    title = f"ServeReplica:{app.settings.app_name}:Gateway"
    for process in psutil.process_iter(["cmdline"]):
        if any(title in part for part in process.info["cmdline"] or ()):
            return process
    raise AssertionError(f"no process titled {title}")


@dataclass
class Watch:
    """The figures of one watched request (seconds, bytes)."""

    rss_start: int
    rss_peak: int = 0
    rss_after: int = 0
    slowest_health_s: float = 0.0
    slowest_other_s: float = 0.0
    polls: int = 0
    # (seconds since the watch began, /healthz s, other s) of each poll over 0.1 s.
    slow: list[tuple[float, float, float]] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def growth_mb(self) -> float:
        return (self.rss_peak - self.rss_start) / MB

    @property
    def median_other_s(self) -> float:
        return statistics.median(self.others) if self.others else 0.0

    @property
    def left_mb(self) -> float:
        return (self.rss_after - self.rss_start) / MB

    def check(self) -> None:
        """The acceptance bounds of issue 29."""
        assert self.polls > 0
        assert self.slowest_health_s < 1.0, self
        assert self.growth_mb < 64, self
        assert self.left_mb < 32, self


def _timed(call: Callable[[], requests.Response]) -> float:
    started = time.monotonic()
    try:
        reply = call()
    except requests.RequestException:
        return POLL_TIMEOUT_S
    return time.monotonic() - started if reply.ok else POLL_TIMEOUT_S


@contextmanager
def watched(
    app: GatewayApp, other: Callable[[], requests.Response] | None = None
) -> Iterator[Watch]:
    """Watch the gateway replica while the block runs: its RSS every 50 ms, ``/healthz``
    (and ``other``, another key's request) every 0.2 s; after it, the RSS once it settles."""
    process = gateway_process(app)
    watch = Watch(rss_start=own_rss(process))

    def sample() -> None:
        # Walking smaps costs this process CPU and the GIL, which the poller shares: done
        # every 50 ms it slowed the very polls it timed, and the gateway beside it
        # (docs/SECURITY.md). The plain RSS is one small read; the walk runs only at a new
        # high of it, where the own RSS peaks too (the store's pages, once touched, stay
        # resident, so the shared share only grows).
        highest = 0
        while True:
            rss = int(process.memory_info().rss)
            if rss > highest + RSS_STEP:
                highest = rss
                watch.rss_peak = max(watch.rss_peak, own_rss(process))
            if watch._stop.wait(RSS_SAMPLE_S):
                return

    def poll() -> None:
        while not watch._stop.wait(POLL_S):
            at = time.monotonic() - started
            health = _timed(lambda: requests.get(app.url + "/healthz", timeout=POLL_TIMEOUT_S))
            listed = _timed(other) if other is not None else 0.0
            watch.slowest_health_s = max(watch.slowest_health_s, health)
            watch.slowest_other_s = max(watch.slowest_other_s, listed)
            watch.others.append(listed)
            if max(health, listed) > SLOW_S:
                watch.slow.append((round(at, 2), round(health, 3), round(listed, 3)))
            watch.polls += 1

    started = time.monotonic()
    threads = [
        threading.Thread(target=sample, daemon=True),
        threading.Thread(target=poll, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield watch
    finally:
        # Watched for a while even when the request was refused at once.
        time.sleep(max(0.0, MIN_WATCH_S - (time.monotonic() - started)))
        watch._stop.set()
        for thread in threads:
            thread.join()
    deadline = time.monotonic() + SETTLE_S
    while True:
        watch.rss_after = own_rss(process)
        if watch.left_mb < 32 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(
        f"\nRSS +{watch.growth_mb:.1f} MB peak, +{watch.left_mb:.1f} MB after; /healthz at "
        f"most {watch.slowest_health_s:.3f} s; other key at most {watch.slowest_other_s:.3f} s, "
        f"median {watch.median_other_s:.3f} s; {watch.polls} polls; slow: {watch.slow}"
    )
