"""The checks before Ray starts, and the one-line cause of a failed replica start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.model_starts import StartFailures, cause_of
from workers.preflight import SettingError, check, invalid_settings
from workers.serve.start_failure import cause_line, gave_up
from workers.settings import WorkerSettings

# Serve's message for a deployment whose replicas failed to start (shortened).
SERVE_MESSAGE = """The deployment failed to start 3 times in a row. See logs for details.
Traceback (most recent call last):
  File "ray/serve/_private/replica.py", line 1, in initialize_and_get_metadata
ray.exceptions.RayTaskError(ValueError): ray::ServeReplica:app:LoRAModel.initialize() \
(pid=1)
  File "transformers/models/auto/configuration_auto.py", line 9, in from_pretrained
    raise ValueError(
ValueError: Unrecognized model in /m. Should have a `model_type` key in its config.json.
"""


def refused(**values: object) -> SettingError:
    with pytest.raises(SettingError) as error:
        check(WorkerSettings(**values))  # type: ignore[arg-type]
    assert "\n" not in str(error.value)
    return error.value


def test_the_demo_kit_passes() -> None:
    check(WorkerSettings())


def test_a_folder_without_config_json_is_not_a_model(tmp_path: Path) -> None:
    error = refused(model=str(tmp_path))
    assert error.setting == "LORAQ_MODEL" and "config.json" in str(error)


def test_a_path_that_is_not_there_is_not_taken_for_a_hub_id() -> None:
    assert "no such folder" in str(refused(model="./no/such/model"))


def test_a_hub_id_outside_the_cache_is_refused_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1" in str(refused(model="no-org/no-model"))


def test_adapter_roots_must_exist(tmp_path: Path) -> None:
    assert refused(adapter_dir=str(tmp_path / "x")).setting == "LORAQ_ADAPTER_DIR"
    error = refused(adapters={"a": str(tmp_path / "x")})
    assert error.setting == "LORAQ_ADAPTERS" and str(error).startswith("LORAQ_ADAPTERS: a:")


def test_invalid_values_name_their_variables() -> None:
    with pytest.raises(ValidationError) as error:
        WorkerSettings(num_model_replicas="x")  # type: ignore[arg-type]
    assert invalid_settings(error.value).startswith("LORAQ_NUM_MODEL_REPLICAS: ")


def test_the_cause_is_the_replicas_exception_not_rays_wrapper() -> None:
    assert cause_line(SERVE_MESSAGE).startswith("ValueError: Unrecognized model in /m.")
    assert cause_line("just words\nmore") == "just words"


def test_a_start_failure_is_one_clipped_line() -> None:
    assert cause_of(ValueError("Unrecognized model\n  more detail")) == (
        "ValueError: Unrecognized model"
    )
    assert cause_of(RuntimeError()) == "RuntimeError"
    assert len(cause_of(OSError("x" * 2000))) == 500


def test_the_app_stops_once_the_replicas_failed_to_start_the_bound_in_a_row() -> None:
    record = StartFailures(failures=2, cause="ValueError: no", replica="r1", ts=1.0)
    assert gave_up(None, 3) is None
    assert gave_up(record, 3) is None
    assert record.summary() == "2 failed starts, last on r1: ValueError: no"
    stopped = gave_up(record.model_copy(update={"failures": 3}), 3)
    assert stopped == (
        "LoRAModel failed to start 3 times in a row (LORAQ_MAX_START_FAILURES=3), "
        "last on r1: ValueError: no"
    )
    assert StartFailures(failures=0).summary() == ""
    assert StartFailures.from_hash({}) is None
    assert StartFailures.from_hash({b"failures": b"1"}) == StartFailures(failures=1)
