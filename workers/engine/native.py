"""C kernels for the CPU (``csrc/*.c``), loaded with ctypes: built ahead of time, or by gcc
at start where none was.

Built ahead (the image's build stage runs ``python -m workers.engine.native x86-64-v3``):
every source compiled for a stated x86-64 instruction-set level into ``prebuilt/``, the
level written beside them. At start the CPU's flags are checked against that level before
a library is loaded: code for instructions the CPU lacks would die of SIGILL in the first
decode step. Otherwise (a developer's checkout, or a CPU below the level) each source is
compiled once a process for the machine itself (``-march=native``, about half a second).

Its OpenMP loops run on PyTorch's own runtime: the library asks for ``libgomp.so.1``,
which torch has loaded already, so a kernel takes as many threads as
``torch.get_num_threads()`` and shares torch's thread pool. Without a library (no gcc, a
failed build), :func:`function` gives None (one warning) and the callers keep their
PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = Path(__file__).with_name("csrc")
PREBUILT = Path(__file__).with_name("prebuilt")
LEVEL_FILE = "LEVEL"
# -ffast-math lets gcc vectorise reductions and expf (glibc's libmvec); it is given to the
# compile step only, because linking a shared object with it (gcc < 13) adds
# crtfastmath.o, which would flush denormals to zero for the whole process.
COMPILE_FLAGS = ("-O3", "-ffast-math", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")

# The CPU flags (as /proc/cpuinfo names them) of gcc's x86-64 levels (the x86-64 psABI);
# "abm" is LZCNT.
_V2 = frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})
_V3 = _V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
LEVEL_FLAGS = {
    "x86-64-v2": _V2,
    "x86-64-v3": _V3,
    "x86-64-v4": _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}

INT, POINTER, FLOAT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


def build(source: str, folder: Path, march: str) -> Path:
    """Compile ``csrc/<source>.c`` into ``folder/<source>.so`` for ``-march=march``.

    Raises ``FileNotFoundError`` without gcc, ``subprocess.CalledProcessError`` when gcc
    refuses the source.
    """
    compiler = shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("gcc")
    code, objects, shared = SOURCES / f"{source}.c", folder / f"{source}.o", folder / f"{source}.so"
    for command in (
        [compiler, *COMPILE_FLAGS, f"-march={march}", "-c", str(code), "-o", str(objects)],
        [compiler, *LINK_FLAGS, str(objects), "-o", str(shared), "-lm"],
    ):
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    objects.unlink()
    return shared


def cpu_flags() -> frozenset[str]:
    """The flags of this machine's CPU (Linux); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def missing_flags(level: str, flags: frozenset[str]) -> frozenset[str]:
    """What a CPU of ``flags`` lacks to run code built for ``level`` (all of it for a
    level this module does not know)."""
    needed = LEVEL_FLAGS.get(level)
    return frozenset({level}) if needed is None else needed - flags


@functools.cache
def library(source: str) -> ctypes.CDLL | None:
    """``csrc/<source>.c`` loaded, built ahead where it was and this CPU runs it, else
    built here; None where it cannot be (logged once)."""
    ahead = _built_ahead(source)
    return ahead if ahead is not None else _built_here(source)


def _built_ahead(source: str) -> ctypes.CDLL | None:
    shared = PREBUILT / f"{source}.so"
    if not shared.exists():
        return None
    level = (PREBUILT / LEVEL_FILE).read_text().strip()
    missing = missing_flags(level, cpu_flags())
    if missing:
        log.warning(
            "the CPU kernel %s was built for %s, which this CPU does not run (no %s): "
            "building it here",
            source,
            level,
            " ".join(sorted(missing)),
        )
        return None
    loaded = ctypes.CDLL(str(shared))
    log.info("CPU kernel %s: built ahead for %s, which this CPU runs", source, level)
    return loaded


def _built_here(source: str) -> ctypes.CDLL | None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loraq-kernel-") as folder:
        try:
            shared = build(source, Path(folder), "native")
            # Linux keeps a loaded library mapped after its file is removed.
            loaded = ctypes.CDLL(str(shared))
        except FileNotFoundError:
            log.warning("no gcc: the CPU kernel %s is not built; PyTorch's path it is", source)
            return None
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or error
            log.warning("the CPU kernel %s did not build (%s): PyTorch's path", source, detail)
            return None
    log.info("CPU kernel %s built in %.0f ms", source, (time.perf_counter() - started) * 1000)
    return loaded


@functools.cache
def function(source: str, name: str, arguments: tuple[Any, ...]) -> Any | None:
    """The C function ``name`` of ``csrc/<source>.c`` with its ctypes ``arguments``, or
    None where the source cannot be built."""
    loaded = library(source)
    if loaded is None:
        return None
    found = loaded[name]  # a function object of its own (attribute access shares one)
    found.argtypes, found.restype = list(arguments), None
    return found


def build_ahead(level: str, folder: Path = PREBUILT) -> list[Path]:
    """Every ``csrc/*.c`` built for ``level`` into ``folder``, the level written beside."""
    if level not in LEVEL_FLAGS:
        raise ValueError(f"unknown level {level!r}: one of {', '.join(LEVEL_FLAGS)}")
    folder.mkdir(parents=True, exist_ok=True)
    built = [build(source.stem, folder, level) for source in sorted(SOURCES.glob("*.c"))]
    (folder / LEVEL_FILE).write_text(level + "\n")
    return built


def main(argv: list[str]) -> int:
    """``python -m workers.engine.native LEVEL``: build the kernels ahead of time."""
    if len(argv) != 1 or argv[0] not in LEVEL_FLAGS:
        print(f"usage: python -m workers.engine.native {{{','.join(LEVEL_FLAGS)}}}")
        return 2
    for path in build_ahead(argv[0]):
        print(f"built {path} for {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
