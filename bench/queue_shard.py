"""How far one Redis shard carries one queue: Redis commands and Redis CPU per job.

A probe reads ``INFO commandstats`` and ``INFO cpu`` of a Redis server before and after a
run; the deltas divided by the jobs run give what each job costs the shard. Run it on a
server nobody else uses (``bench.queue`` starts its own on a free port): every client of
the server is counted. Redis runs commands on one thread, so its CPU time per job sets
the shard's ceiling, whatever the workers' machines add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis

# The probe's own commands, not the queue's.
PROBE_COMMANDS = frozenset({"info", "config|resetstat", "ping"})


def command_calls(commandstats: Mapping[str, Any]) -> dict[str, int]:
    """Calls by command name (``xadd``, ``evalsha``, ``config|get`` …) of an ``INFO
    commandstats`` reply (redis-py parses it into ``cmdstat_<name>: {calls: …}``)."""
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in commandstats.items()
        if name.startswith("cmdstat_")
    }


def calls_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Calls made between two readings, the probe's own left out, busiest first."""
    delta = {
        name: calls - before.get(name, 0)
        for name, calls in after.items()
        if name not in PROBE_COMMANDS and calls > before.get(name, 0)
    }
    return dict(sorted(delta.items(), key=lambda item: -item[1]))


def cpu_seconds(info_cpu: Mapping[str, Any]) -> float:
    """The CPU time so far (user + system) of the server's main thread, the one that runs
    the commands (the whole process's on a server that does not report it)."""
    if "used_cpu_user_main_thread" in info_cpu:
        return float(info_cpu["used_cpu_user_main_thread"]) + float(
            info_cpu["used_cpu_sys_main_thread"]
        )
    return float(info_cpu["used_cpu_user"]) + float(info_cpu["used_cpu_sys"])


@dataclass
class ShardCost:
    """What a run of ``jobs`` jobs cost one Redis server."""

    jobs: int
    seconds: float
    calls: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0

    @property
    def commands_per_job(self) -> float:
        """Every command the server ran, per job (commands run by scripts included)."""
        return sum(self.calls.values()) / self.jobs

    @property
    def cpu_us_per_job(self) -> float:
        """The server's CPU time per job, in microseconds."""
        return self.cpu_s / self.jobs * 1e6

    @property
    def ceiling_jobs_per_s(self) -> float:
        """Jobs per second at which the server's thread would be busy all the time."""
        return self.jobs / self.cpu_s if self.cpu_s else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the bench's JSON, per job figures included."""
        return {
            "jobs": self.jobs,
            "seconds": self.seconds,
            "jobs_per_s": self.jobs / self.seconds,
            "commands_per_job": self.commands_per_job,
            "calls_per_job": {name: calls / self.jobs for name, calls in self.calls.items()},
            "redis_cpu_s": self.cpu_s,
            "redis_cpu_us_per_job": self.cpu_us_per_job,
            "redis_ceiling_jobs_per_s": self.ceiling_jobs_per_s,
        }


class ShardProbe:
    """Readings of one server around a run: ``with ShardProbe(client) as probe: …``, then
    :meth:`cost`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._calls: dict[str, int] = {}
        self._cpu_s = 0.0
        self.delta: dict[str, int] = {}
        self.cpu_s = 0.0

    def __enter__(self) -> ShardProbe:
        self._calls, self._cpu_s = self._read()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        calls, cpu_s = self._read()
        self.delta = calls_delta(self._calls, calls)
        self.cpu_s = cpu_s - self._cpu_s

    def _read(self) -> tuple[dict[str, int], float]:
        return command_calls(self.client.info("commandstats")), cpu_seconds(self.client.info("cpu"))

    def cost(self, jobs: int, seconds: float) -> ShardCost:
        """The run's cost per job."""
        return ShardCost(jobs, seconds, self.delta, self.cpu_s)
