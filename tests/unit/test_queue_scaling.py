"""The autoscaling decision on the queue backlog, driven tick by tick with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from workers.queue.scaling import (
    Sample,
    ScalingParams,
    ScalingState,
    decide,
    group_backlog,
    latest_backlog,
    wanted_replicas,
)

PARAMS = ScalingParams(
    target_backlog_per_replica=10,
    min_replicas=1,
    max_replicas=4,
    scale_up_delay_s=5,
    scale_down_delay_s=30,
    max_sample_age_s=20,
)


@dataclass
class Autoscaler:
    """What Serve does around the policy: call it every tick, carry its state, apply it."""

    params: ScalingParams = PARAMS
    replicas: int = 1
    now: float = 1000.0
    state: ScalingState = field(default_factory=ScalingState)
    history: list[int] = field(default_factory=list)

    def tick(self, backlog: float | None, dt: float = 1.0) -> int:
        self.now += dt
        self.replicas, self.state = decide(
            self.replicas, backlog, self.params, self.state, now=self.now
        )
        self.history.append(self.replicas)
        return self.replicas

    def run(self, backlog: float | None, seconds: int) -> int:
        for _ in range(seconds):
            self.tick(backlog)
        return self.replicas


def test_wanted_replicas_is_backlog_over_target_within_bounds() -> None:
    assert wanted_replicas(0, PARAMS) == 1
    assert wanted_replicas(10, PARAMS) == 1
    assert wanted_replicas(11, PARAMS) == 2
    assert wanted_replicas(35, PARAMS) == 4
    assert wanted_replicas(10_000, PARAMS) == 4
    assert wanted_replicas(-3, PARAMS) == 1


def test_a_backlog_scales_up_once_it_has_lasted_the_up_delay() -> None:
    scaler = Autoscaler()
    assert scaler.run(25, 5) == 1  # the wish began at the first tick: 4 s < 5 s
    assert scaler.tick(25) == 3
    assert scaler.history == [1, 1, 1, 1, 1, 3]


def test_scaling_up_stops_at_max_replicas() -> None:
    scaler = Autoscaler()
    assert scaler.run(500, 60) == 4


def test_a_backlog_that_comes_and_goes_within_the_delays_changes_nothing() -> None:
    scaler = Autoscaler(replicas=2)
    for _ in range(30):
        scaler.tick(25)  # wants 3, for 3 s
        scaler.tick(25)
        scaler.tick(25)
        scaler.tick(3)  # wants 1, for 1 s
    assert set(scaler.history) == {2}


def test_scale_down_to_min_only_after_the_queue_stays_drained_for_the_delay() -> None:
    scaler = Autoscaler(replicas=4)
    assert scaler.run(0, 30) == 4
    assert scaler.tick(0) == 1


def test_a_scale_down_goes_no_lower_than_the_highest_wish_during_the_wait() -> None:
    scaler = Autoscaler(replicas=4)
    scaler.run(0, 10)
    scaler.run(25, 10)  # wants 3: still down, the wait goes on
    assert scaler.run(0, 10) == 4
    assert scaler.tick(0) == 3


def test_a_returning_backlog_restarts_the_scale_down_wait() -> None:
    scaler = Autoscaler(replicas=3)
    scaler.run(0, 25)
    scaler.tick(40)  # wants 4: the wish flips to up
    assert scaler.run(0, 30) == 3
    assert scaler.tick(0) == 1


def test_without_a_reading_the_count_holds_and_any_wait_restarts() -> None:
    scaler = Autoscaler(replicas=3)
    scaler.run(0, 20)
    assert scaler.run(None, 300) == 3
    assert scaler.run(0, 30) == 3
    assert scaler.tick(0) == 1


def test_a_count_outside_the_bounds_is_brought_inside_at_once() -> None:
    assert Autoscaler(replicas=9).tick(None) == 4
    assert Autoscaler(replicas=0).tick(0) == 1


def test_stale_and_missing_readings_are_no_reading() -> None:
    samples = [Sample(timestamp=100, backlog=7), Sample(timestamp=90, backlog=50)]
    assert latest_backlog(samples, now=110, max_age_s=20) == 7
    assert latest_backlog(samples, now=121, max_age_s=20) is None
    assert latest_backlog([], now=110, max_age_s=20) is None


def test_backlog_is_lag_plus_pending_of_the_workers_group() -> None:
    groups = [
        {"name": b"other", "lag": 900, "pending": 900},
        {"name": b"p:workers", "lag": 30, "pending": 8, "consumers": 2},
    ]
    assert group_backlog(groups, "p:workers") == 38
    assert group_backlog(groups, "p:nobody") is None
    assert group_backlog([{"name": b"p:workers", "lag": None, "pending": 8}], "p:workers") is None


def test_state_survives_serve_keeping_it_as_plain_data() -> None:
    state = ScalingState(direction=-1, since=12.5, peak=2)
    serve_keeps = {**state.to_dict(), "__decision_counter": 3}
    assert ScalingState.from_dict(serve_keeps) == state
    assert ScalingState.from_dict({}) == ScalingState()


@given(
    start=st.integers(min_value=0, max_value=8),
    readings=st.lists(st.one_of(st.none(), st.floats(0, 1000)), max_size=80),
)
def test_every_decision_is_within_bounds_and_changes_only_after_a_delay(
    start: int, readings: list[float | None]
) -> None:
    scaler = Autoscaler(replicas=start)
    first = scaler.tick(None)
    previous, unchanged_since = first, scaler.now
    for reading in readings:
        count = scaler.tick(reading)
        assert PARAMS.min_replicas <= count <= PARAMS.max_replicas
        if count != previous:
            assert scaler.now - unchanged_since >= PARAMS.scale_up_delay_s
            previous, unchanged_since = count, scaler.now
