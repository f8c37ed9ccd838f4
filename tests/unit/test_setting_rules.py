"""Start-up refuses combinations of settings that cannot work, naming both settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from workers.setting_rules import RULES, env_name
from workers.settings import WorkerSettings

# Each invalid combination: two settings, both of which its message must name.
INVALID: list[dict[str, Any]] = [
    {"lease_renew_s": 30.0, "visibility_timeout_s": 30.0},
    {"lease_renew_s": 10.0, "visibility_timeout_s": 5.0},
    {"min_model_replicas": 3, "max_model_replicas": 2},
    {"retry_backoff_s": 5.0, "max_retry_backoff_s": 1.0},
    {"read_block_ms": 10_000, "socket_timeout_s": 10.0},
    {"redis_wait_timeout_ms": 3000, "socket_timeout_s": 2.0},
    {"max_adapter_mb": 2048, "adapter_disk_cache_mb": 1024},
]


@pytest.mark.parametrize("values", INVALID)
def test_start_up_refuses_the_combination_naming_both_settings(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        WorkerSettings(**values)
    message = str(refused.value)
    assert all(env_name(name) in message for name in values), message


def test_every_rule_has_an_invalid_combination_listed() -> None:
    listed = {tuple(values) for values in INVALID}
    assert {(rule.first, rule.second) for rule in RULES} == listed


def test_the_defaults_and_the_edges_that_work_start() -> None:
    WorkerSettings()
    WorkerSettings(min_model_replicas=2, max_model_replicas=2, lease_renew_s=4.9)
