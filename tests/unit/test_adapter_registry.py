"""Adapter names to folders: name rules, configured roots, scan, run-time registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import ErrorType
from workers.adapters.registry import AdapterRegistry
from workers.engine.requests import EngineError


def adapter_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def error_type(call: object) -> ErrorType:
    with pytest.raises(EngineError) as caught:
        call()  # type: ignore[operator]
    return caught.value.type


def test_scan_and_static_map(tmp_path: Path) -> None:
    adapter_folder(tmp_path / "scan" / "upper")
    adapter_folder(tmp_path / "scan" / "rev")
    (tmp_path / "scan" / "not-an-adapter").mkdir()
    static = adapter_folder(tmp_path / "elsewhere" / "x")
    registry = AdapterRegistry({"sql": str(static)}, str(tmp_path / "scan"))
    assert registry.names() == ["rev", "sql", "upper"]
    assert registry.resolve("upper") == (tmp_path / "scan" / "upper").resolve()
    assert registry.resolve("sql") == static.resolve()


def test_unknown_and_malformed_names(tmp_path: Path) -> None:
    registry = AdapterRegistry({}, str(tmp_path))
    assert error_type(lambda: registry.resolve("nope")) is ErrorType.UNKNOWN_ADAPTER
    for bad in ["../x", "a/b", "..", ".hidden", "a\\b", "", "__base__", "x" * 200]:
        assert error_type(lambda bad=bad: registry.resolve(bad)) is ErrorType.VALIDATION


def test_a_folder_dropped_in_after_start_is_found(tmp_path: Path) -> None:
    registry = AdapterRegistry({}, str(tmp_path))
    adapter_folder(tmp_path / "late")
    assert registry.resolve("late") == (tmp_path / "late").resolve()


def test_run_time_registration_stays_under_the_roots(tmp_path: Path) -> None:
    registry = AdapterRegistry({}, str(tmp_path / "root"))
    inside = adapter_folder(tmp_path / "root" / "team" / "v2")
    registry.add("v2", str(inside))
    assert registry.resolve("v2") == inside.resolve()
    outside = adapter_folder(tmp_path / "outside")
    assert error_type(lambda: registry.add("o", str(outside))) is ErrorType.VALIDATION
    sneaky = str(tmp_path / "root" / ".." / "outside")
    assert error_type(lambda: registry.add("s", sneaky)) is ErrorType.VALIDATION


def test_a_symlink_out_of_the_roots_is_refused(tmp_path: Path) -> None:
    outside = adapter_folder(tmp_path / "outside")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(outside)
    registry = AdapterRegistry({}, str(tmp_path / "root"))
    assert error_type(lambda: registry.resolve("link")) is ErrorType.VALIDATION
