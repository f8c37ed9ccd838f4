"""How many model replicas the queue's backlog asks for: a pure decision, no Ray, no Redis.

The backlog is the consumer group's lag (entries not yet delivered) plus its pending
entries (delivered, not yet acknowledged): every job that is waiting or running. The
policy aims at ``ceil(backlog / target_backlog_per_replica)`` replicas within the bounds,
and moves there only after the wish has held for a delay, so that a backlog hovering
around a boundary does not make replicas start and stop (each start loads a base model).
Without a fresh backlog reading it holds the current count: scaling down blind could take
away capacity a queue still needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from producer.stats import find_group


@dataclass(frozen=True)
class ScalingParams:
    """The knobs of the decision."""

    target_backlog_per_replica: float
    min_replicas: int
    max_replicas: int
    scale_up_delay_s: float
    scale_down_delay_s: float
    # A backlog reading older than this is no reading at all.
    max_sample_age_s: float


@dataclass(frozen=True)
class Sample:
    """One backlog reading and when it was taken (epoch seconds)."""

    timestamp: float
    backlog: float


@dataclass(frozen=True)
class ScalingState:
    """A wish to scale that has not yet held long enough.

    ``direction`` is +1 (up), -1 (down) or 0 (none); ``since`` when the wish began;
    ``peak`` the most replicas the backlog asked for while it lasted: a scale-down goes
    no lower than that, so one quiet reading at the end of the delay cannot undercut it.
    """

    direction: int = 0
    since: float | None = None
    peak: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as Serve keeps a policy's state between calls."""
        return {"direction": self.direction, "since": self.since, "peak": self.peak}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScalingState:
        """The state :meth:`to_dict` wrote (Serve's own keys beside it are ignored)."""
        return cls(
            direction=int(data.get("direction", 0)),
            since=data.get("since"),
            peak=int(data.get("peak", 0)),
        )


def group_backlog(groups: Sequence[Mapping[str, Any]], group: str) -> int | None:
    """Jobs waiting or running, from an ``XINFO GROUPS`` reply: the group's lag plus its
    pending count; ``None`` without the group, or when Redis cannot count the lag (it
    reports none after some deletions)."""
    info = find_group(group, groups)
    if info is None or info.get("lag") is None:
        return None
    return int(info["lag"]) + int(info["pending"])


def latest_backlog(samples: Iterable[Sample], *, now: float, max_age_s: float) -> float | None:
    """The newest reading if it is at most ``max_age_s`` old, else ``None``.

    Every replica reads the same queue, so the newest reading of any replica is the best.
    """
    newest = max(samples, key=lambda sample: sample.timestamp, default=None)
    if newest is None or now - newest.timestamp > max_age_s:
        return None
    return newest.backlog


def wanted_replicas(backlog: float, params: ScalingParams) -> int:
    """The replica count that carries ``backlog`` at the target, within the bounds."""
    wanted = math.ceil(max(backlog, 0.0) / params.target_backlog_per_replica)
    return min(params.max_replicas, max(params.min_replicas, wanted))


def decide(
    current: int,
    backlog: float | None,
    params: ScalingParams,
    state: ScalingState,
    *,
    now: float,
) -> tuple[int, ScalingState]:
    """The replica count to run now, and the state to pass to the next call.

    ``current`` is the count the deployment is heading for; ``backlog`` ``None`` when
    no fresh reading exists.
    """
    bounded = min(params.max_replicas, max(params.min_replicas, current))
    if backlog is None:
        return bounded, ScalingState()
    wanted = wanted_replicas(backlog, params)
    direction = (wanted > bounded) - (wanted < bounded)
    if direction == 0:
        return bounded, ScalingState()
    ongoing = direction == state.direction and state.since is not None
    since = state.since if ongoing and state.since is not None else now
    # Up goes to the latest wish; down no lower than the highest wish of the wait.
    target = max(state.peak, wanted) if ongoing and direction < 0 else wanted
    delay_s = params.scale_up_delay_s if direction > 0 else params.scale_down_delay_s
    if now - since < delay_s:
        return bounded, ScalingState(direction=direction, since=since, peak=target)
    return target, ScalingState()
