"""The CPU kernels built ahead of time: loaded where the CPU runs their level, built here
where it does not (gcc, real builds)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.engine import native

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
LEVEL = "x86-64-v2"  # every x86-64 CPU of the last fifteen years runs it


def test_missing_flags_name_what_a_cpu_lacks_for_a_level() -> None:
    v3 = native.LEVEL_FLAGS["x86-64-v3"]
    assert native.missing_flags("x86-64-v3", v3 | {"extra"}) == frozenset()
    assert native.missing_flags("x86-64-v4", v3) == {
        "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"
    }  # fmt: skip
    assert native.missing_flags("x86-64-v3", v3 - {"avx2"}) == {"avx2"}
    assert native.missing_flags("armv9-a", v3) == {"armv9-a"}  # a level it cannot check


def test_an_unknown_level_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="x86-64-v3"):
        native.build_ahead("native", tmp_path)
    assert native.main(["native"]) == 2
    assert not list(tmp_path.iterdir())


@pytest.fixture
def prebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every kernel built ahead for :data:`LEVEL` into a folder the loader reads."""
    native.build_ahead(LEVEL, tmp_path)
    monkeypatch.setattr(native, "PREBUILT", tmp_path)
    native.library.cache_clear()
    native.function.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    native.library.cache_clear()
    native.function.cache_clear()


@needs_gcc
def test_kernels_built_ahead_are_loaded_where_the_cpu_runs_their_level(
    prebuilt: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if native.missing_flags(LEVEL, native.cpu_flags()):
        pytest.skip(f"this CPU does not run {LEVEL}")
    assert sorted(path.name for path in prebuilt.iterdir()) == [
        "LEVEL", "decode_attention.so", "lora_delta.so"
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger=native.__name__):
        assert native.library("decode_attention") is not None
    assert f"decode_attention: built ahead for {LEVEL}" in caplog.text
    assert "built in" not in caplog.text  # nothing compiled here


@needs_gcc
def test_a_cpu_below_the_level_gets_the_kernels_built_here(
    prebuilt: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset({"sse2"}))
    with caplog.at_level(logging.INFO, logger=native.__name__):
        assert native.library("lora_delta") is not None
    assert f"was built for {LEVEL}, which this CPU does not run" in caplog.text
    assert "CPU kernel lora_delta built in" in caplog.text
