"""Autoscaling the LoRAModel deployment on the queue backlog: the Ray Serve side.

Serve's default autoscaler counts Serve requests, and jobs waiting in Redis are none: the
consumer loop reads only as many as it has free slots. So each model replica reports the
backlog (:func:`read_backlog`, from its ``record_autoscaling_stats``), and Serve's
controller calls :class:`BacklogPolicy`, which decides with
:func:`workers.queue.scaling.decide`. The policy keeps its own delays, so Serve's are set
to zero (they would add up).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from schemas.keys import Keys
from workers.errors import REDIS_DOWN
from workers.queue.scaling import (
    Sample,
    ScalingParams,
    ScalingState,
    decide,
    group_backlog,
    latest_backlog,
)
from workers.settings import WorkerSettings

BACKLOG_METRIC = "queue_backlog"
# Serve records a reading every look_back_period_s * 0.2 s and sends the readings to its
# controller every metrics interval: a reading is up to 1.4 intervals old when the policy
# sees it. One older than three intervals means the replicas cannot read Redis or report.
LOOK_BACK_INTERVALS = 2.0
STALE_AFTER_INTERVALS = 3.0


async def read_backlog(client: aioredis.Redis, keys: Keys) -> dict[str, float]:
    """The ``record_autoscaling_stats`` reply: the backlog from one ``XINFO GROUPS``, or
    nothing when it is unknown (no stream or group yet, lag not countable)."""
    try:
        groups = await client.xinfo_groups(keys.jobs)
    except redis.exceptions.ResponseError:  # no stream yet
        return {}
    except REDIS_DOWN:  # no reading: the policy holds the count until Redis is back
        return {}
    backlog = group_backlog(groups, keys.group)
    return {} if backlog is None else {BACKLOG_METRIC: float(backlog)}


class BacklogPolicy:
    """Serve's custom autoscaling policy for the LoRAModel deployment.

    Serve instantiates it once in its controller with ``policy_kwargs`` and calls it
    every control-loop tick; the bounds come from the context.
    """

    def __init__(
        self,
        *,
        target_backlog_per_replica: float,
        scale_up_delay_s: float,
        scale_down_delay_s: float,
        max_sample_age_s: float,
    ) -> None:
        self.tuning: dict[str, float] = {
            "target_backlog_per_replica": target_backlog_per_replica,
            "scale_up_delay_s": scale_up_delay_s,
            "scale_down_delay_s": scale_down_delay_s,
            "max_sample_age_s": max_sample_age_s,
        }

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        now = ctx.current_time or 0.0
        params = ScalingParams(
            min_replicas=ctx.capacity_adjusted_min_replicas,
            max_replicas=ctx.capacity_adjusted_max_replicas,
            **self.tuning,
        )
        series = (ctx.raw_metrics or {}).get(BACKLOG_METRIC, {})
        samples = [
            Sample(point.timestamp, point.value) for points in series.values() for point in points
        ]
        backlog = latest_backlog(samples, now=now, max_age_s=params.max_sample_age_s)
        replicas, state = decide(
            ctx.target_num_replicas,
            backlog,
            params,
            ScalingState.from_dict(ctx.policy_state),
            now=now,
        )
        return replicas, state.to_dict()


def autoscaling_config(settings: WorkerSettings) -> AutoscalingConfig:
    """The LoRAModel deployment's autoscaling: :class:`BacklogPolicy` within the bounds."""
    interval_s = settings.autoscale_metrics_interval_s
    policy = AutoscalingPolicy(  # type: ignore[no-untyped-call]
        policy_function=BacklogPolicy,
        policy_kwargs={
            "target_backlog_per_replica": settings.target_backlog_per_replica,
            "scale_up_delay_s": settings.scale_up_delay_s,
            "scale_down_delay_s": settings.scale_down_delay_s,
            "max_sample_age_s": STALE_AFTER_INTERVALS * interval_s,
        },
    )
    return AutoscalingConfig(
        min_replicas=settings.min_model_replicas,
        max_replicas=settings.max_model_replicas,
        # (Serve marks this field deprecated, for environment variables it does not read yet)
        metrics_interval_s=interval_s,
        look_back_period_s=LOOK_BACK_INTERVALS * interval_s,
        upscale_delay_s=0.0,
        downscale_delay_s=0.0,
        policy=policy,
    )
