"""C kernels for the CPU (``csrc/*.c``), built by gcc at run time for the machine they run on.

Each source is compiled once a process (``-O3 -march=native``, about half a second) into
a shared library loaded with ctypes. Its OpenMP loops run on PyTorch's own runtime: the
library asks for ``libgomp.so.1``, which torch has loaded already, so a kernel takes as
many threads as ``torch.get_num_threads()`` and shares torch's thread pool. Without gcc,
or when a build fails, :func:`function` gives None (one warning) and the callers keep
their PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = Path(__file__).with_name("csrc")
# -ffast-math lets gcc vectorise reductions and expf (glibc's libmvec); it is given to the
# compile step only, because linking a shared object with it (gcc < 13) adds
# crtfastmath.o, which would flush denormals to zero for the whole process.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")

INT, POINTER, FLOAT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


@functools.cache
def library(source: str) -> ctypes.CDLL | None:
    """``csrc/<source>.c`` built and loaded, or None where it cannot be (logged once)."""
    compiler = shutil.which("gcc")
    if compiler is None:
        log.warning("no gcc: the CPU kernel %s is not built; PyTorch's path it is", source)
        return None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loraq-kernel-") as folder:
        objects, shared = Path(folder) / f"{source}.o", Path(folder) / f"{source}.so"
        try:
            for command in (
                [compiler, *COMPILE_FLAGS, "-c", str(SOURCES / f"{source}.c"), "-o", str(objects)],
                [compiler, *LINK_FLAGS, str(objects), "-o", str(shared), "-lm"],
            ):
                subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
            # Linux keeps a loaded library mapped after its file is removed.
            loaded = ctypes.CDLL(str(shared))
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
