"""The arithmetic of ``bench.queue --shard-only``: what one job costs a Redis shard."""

from __future__ import annotations

import pytest

from bench.queue_shard import ShardCost, calls_delta, command_calls, cpu_seconds


def test_calls_are_read_by_command_and_the_probe_s_own_left_out() -> None:
    before = command_calls({"cmdstat_xadd": {"calls": 10, "usec": 5}, "errorstat_ERR": {}})
    after = command_calls(
        {
            "cmdstat_xadd": {"calls": 30},
            "cmdstat_evalsha": {"calls": 6},
            "cmdstat_info": {"calls": 99},
            "cmdstat_hget": {"calls": 0},
        }
    )
    assert before == {"xadd": 10}
    assert calls_delta(before, after) == {"xadd": 20, "evalsha": 6}
    assert list(calls_delta(before, after)) == ["xadd", "evalsha"]  # busiest first


def test_the_main_thread_s_cpu_is_what_bounds_a_shard() -> None:
    assert cpu_seconds({"used_cpu_user": 9.0, "used_cpu_sys": 1.0}) == 10.0
    both = {
        "used_cpu_user": 9.0,
        "used_cpu_sys": 1.0,
        "used_cpu_user_main_thread": 2.0,
        "used_cpu_sys_main_thread": 0.5,
    }
    assert cpu_seconds(both) == 2.5
    cost = ShardCost(jobs=1000, seconds=4.0, calls={"evalsha": 3000, "xadd": 6000}, cpu_s=0.2)
    assert cost.commands_per_job == 9.0
    assert cost.cpu_us_per_job == pytest.approx(200.0)
    assert cost.ceiling_jobs_per_s == pytest.approx(5000.0)
    assert cost.to_dict()["calls_per_job"] == {"evalsha": 3.0, "xadd": 6.0}
    assert cost.to_dict()["jobs_per_s"] == 250.0
