"""BacklogPolicy inside Serve's own policy wrapper (no Ray started): what the controller runs."""

from __future__ import annotations

from typing import Any

from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingContext

from workers.serve.autoscaling import BACKLOG_METRIC, autoscaling_config
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(
    autoscale=True,
    min_model_replicas=1,
    max_model_replicas=3,
    target_backlog_per_replica=10,
    scale_up_delay_s=4,
    scale_down_delay_s=8,
)
DEPLOYMENT = DeploymentID(name="LoRAModel", app_name="loraq")
REPLICAS = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(3)]


class Controller:
    """Serve's controller loop in miniature: wrapped policy, carried state, a clock."""

    def __init__(self) -> None:
        self.config = autoscaling_config(SETTINGS)
        self.policy = _apply_autoscaling_config(_resolve_policy_callable(self.config.policy))
        self.target = 1
        self.state: dict[str, Any] = {}
        self.now = 1_000_000.0

    def tick(self, readings: dict[int, tuple[float, float]], dt: float = 1.0) -> int:
        """One decision; ``readings``: replica index -> (age in seconds, backlog)."""
        self.now += dt
        raw = {
            BACKLOG_METRIC: {
                REPLICAS[i]: [TimeStampedValue(self.now - age, backlog)]
                for i, (age, backlog) in readings.items()
            }
        }
        ctx = AutoscalingContext(
            deployment_id=DEPLOYMENT,
            deployment_name=DEPLOYMENT.name,
            app_name=DEPLOYMENT.app_name,
            current_num_replicas=self.target,
            target_num_replicas=self.target,
            running_replicas=REPLICAS[: self.target],
            total_num_requests=0.0,
            total_queued_requests=0.0,
            aggregated_metrics={},
            raw_metrics=raw,
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=self.state,
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=self.now,
            config=self.config,
        )
        self.target, self.state = self.policy(ctx)
        return self.target


def test_serves_config_leaves_the_delays_to_the_policy() -> None:
    config = autoscaling_config(SETTINGS)
    assert (config.min_replicas, config.max_replicas) == (1, 3)
    assert config.upscale_delay_s == config.downscale_delay_s == 0
    assert config.policy.policy_function == "workers.serve.autoscaling.BacklogPolicy"


def test_the_newest_reading_of_any_replica_drives_the_decision_after_the_delays() -> None:
    controller = Controller()
    ups = [controller.tick({0: (1, 25)}) for _ in range(5)]
    assert ups == [1, 1, 1, 1, 3]
    # The older reading says the queue is full, the newer one that it drained.
    downs = [controller.tick({0: (9, 500), 1: (2, 0)}) for _ in range(9)]
    assert downs == [3] * 8 + [1]


def test_stale_or_missing_readings_hold_the_count() -> None:
    controller = Controller()
    for _ in range(5):
        controller.tick({0: (1, 25)})
    assert controller.target == 3
    assert {controller.tick({0: (60, 0)}) for _ in range(30)} == {3}
    assert {controller.tick({}) for _ in range(30)} == {3}
