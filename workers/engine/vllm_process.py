"""vLLM's engine-core process dies with the replica that started it.

vLLM 0.32's ``AsyncLLM`` always runs its ``EngineCore`` in a child process (there is no
in-process asyncio engine: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` applies to the sync
``LLM`` only), and that child does not notice when its parent is killed: after a SIGKILL
of a model replica it would keep the model's memory and a core forever. So the child is
started through :func:`run_engine_core`, which first asks Linux to kill it when the
thread that started it ends (``PR_SET_PDEATHSIG``), then runs vLLM's own entry point.

The same hook fixes a bug of vLLM 0.32's CPU LoRA path in the child, where the forward
passes run (:func:`_mask_rows_without_adapter`).

The thread matters: the death signal follows the *thread* that forked the child, so the
backend must be built on a thread that lives as long as the replica (its event loop).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)

_PARENT_ENV = "LORAQ_VLLM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Child: SIGKILL this process when its parent ends; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return
    # The parent may have died between the fork and the prctl: then nobody signals us.
    expected = os.environ.get(_PARENT_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(1)


def _mask_rows_without_adapter() -> None:
    """Child: rows without an adapter get no LoRA delta on the CPU path.

    vLLM marks such a row with adapter index -1, and its PyTorch fallback ops
    (``vllm/lora/ops/torch_ops/lora_ops.py``, used by ``PunicaWrapperCPU``) select the
    weights with ``lora_a_weights[indices]``: -1 picks the *last* slot, so a base-model
    row in a batch that fills every slot is served by the adapter in that slot (seen on
    the demo kit: base rows beside ``title`` rows came out title-cased). The GPU kernels
    skip -1. Zeroing those rows of the shrink output (``x @ A``) zeroes their delta, since
    the expand step only adds ``(x @ A) @ B``.
    """
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    original = lora_ops.bgmv_shrink
    if getattr(original, "__loraq_masked__", False):
        return

    @functools.wraps(original)
    def bgmv_shrink(
        inputs: Any,
        lora_a_weights: Any,
        output_tensor: Any,
        lora_indices_tensor: Any,
        scaling: float = 1.0,
    ) -> None:
        original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        without = lora_indices_tensor < 0  # [tokens]
        if without.shape[0] == output_tensor.shape[0] and bool(without.any()):
            output_tensor[without] = 0  # [tokens, rank]

    bgmv_shrink.__loraq_masked__ = True  # type: ignore[attr-defined]
    # sgmv_shrink (prefill) calls the module's bgmv_shrink; decode calls punica_cpu's copy.
    lora_ops.bgmv_shrink = bgmv_shrink  # type: ignore[assignment]
    punica_cpu.bgmv_shrink = bgmv_shrink  # type: ignore[attr-defined,assignment]


def _original(owner: Any, name: str) -> Any:
    """vLLM's own ``owner.name``: under ``fork`` a child inherits our replacement."""
    current = getattr(owner, name)
    return getattr(current, "__wrapped_by_loraq__", current)


def _replace(owner: Any, name: str, ours: Any) -> None:
    """Make vLLM start ``owner.name`` as ``ours`` (a module-level function, so that
    ``spawn`` pickles it by name); idempotent."""
    current = getattr(owner, name)
    if current is ours:
        return
    ours.__wrapped_by_loraq__ = current
    setattr(owner, name, staticmethod(ours))


def run_worker(*args: Any, **kwargs: Any) -> None:
    """Worker process of vLLM's multiprocess executor (what the CPU platform uses): the
    forward passes run here. vLLM's workers already watch their parent."""
    from vllm.v1.executor.multiproc_executor import WorkerProc

    _mask_rows_without_adapter()
    _original(WorkerProc, "worker_main")(*args, **kwargs)


def run_engine_core(*args: Any, **kwargs: Any) -> None:
    """Engine-core process: vLLM's ``EngineCoreProc.run_engine_core``, bound to the
    parent's life, starting its workers through :func:`run_worker`."""
    from vllm.v1.engine.core import EngineCoreProc
    from vllm.v1.executor.multiproc_executor import WorkerProc

    _die_with_parent()
    _mask_rows_without_adapter()  # the single-process executor runs the model here
    _replace(WorkerProc, "worker_main", run_worker)
    _original(EngineCoreProc, "run_engine_core")(*args, **kwargs)


def bind_engine_core_to_parent() -> None:
    """Parent: start vLLM's engine-core processes through :func:`run_engine_core`.

    vLLM looks ``EngineCoreProc.run_engine_core`` up each time it starts an engine core,
    so replacing the attribute is enough; idempotent.
    """
    from vllm.v1.engine.core import EngineCoreProc

    _replace(EngineCoreProc, "run_engine_core", run_engine_core)
    os.environ[_PARENT_ENV] = str(os.getpid())
