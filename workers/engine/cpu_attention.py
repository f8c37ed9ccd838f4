"""A one-token decode attention kernel for the CPU, behind transformers' attention interface.

PyTorch's SDPA on a CPU runs a query of one token through its flash-attention kernel,
which reads the keys and values of a decode step at a fraction of what one core reads
(measured on this project's 2-core machine, 1 thread, the bench model's 16 rows x 8
heads x 64 dims per layer, each layer's cache read from memory: SDPA 3-10 GB/s, a plain
sum of the same views 7-21 GB/s, this kernel 6.5-12 GB/s, 1.9-2.3x SDPA at 16 rows of 48
to 288 columns and at 64 rows of 96; level with it at one row). On a model of GQA heads
SDPA also copies the keys and values to every query head when a mask is given
(transformers' ``repeat_kv``); the kernel reads each kv head in place.

``csrc/decode_attention.c`` is built at run time by ``gcc`` for the machine it runs on
(``-O3 -march=native``, about half a second, once a process), and loaded with ctypes; its
OpenMP loop runs on PyTorch's own runtime, so it takes as many threads as torch does. No
gcc, or a build that fails: every pass stays on SDPA (one warning).

:func:`use_decode_attention` switches a model from ``sdpa`` to ``loraq_cpu_decode``: a
name registered with transformers whose masks are SDPA's and whose calls go to the kernel
when they fit (one query token, float32 on a CPU, a boolean mask per row or none, no
dropout, softcap, sinks or position bias) and to SDPA otherwise, prefills included.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)

NAME = "loraq_cpu_decode"
SOURCE = Path(__file__).with_name("csrc") / "decode_attention.c"
# -ffast-math lets gcc vectorise expf (glibc's libmvec); it is given to the compile step
# only, because linking a shared object with it (gcc < 13) adds crtfastmath.o, which
# would flush denormals to zero for the whole process.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")
# Keyword arguments of an attention call that change its result in ways the kernel does
# not compute (Gemma's softcap, gpt-oss's sinks, T5-style position biases).
UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")

_int, _ptr = ctypes.c_int64, ctypes.c_void_p
_ARGUMENTS = [_ptr] * 5 + [_int] * 6 + [ctypes.c_float] + [_int] * 11


@functools.cache
def kernel() -> Any | None:
    """The built kernel's function, or None where it cannot be built (logged once)."""
    compiler = shutil.which("gcc")
    if compiler is None:
        log.warning("no gcc: decode attention stays on SDPA")
        return None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loraq-kernel-") as folder:
        objects, library = Path(folder) / "attention.o", Path(folder) / "attention.so"
        try:
            for command in (
                [compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(objects)],
                [compiler, *LINK_FLAGS, str(objects), "-o", str(library), "-lm"],
            ):
                subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
            # Linux keeps a loaded library mapped after its file is removed.
            function = ctypes.CDLL(str(library)).loraq_decode_attention
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or error
            log.warning("decode attention kernel did not build (%s); SDPA it is", detail)
            return None
    function.argtypes, function.restype = _ARGUMENTS, None
    log.info("decode attention kernel built in %.0f ms", (time.perf_counter() - started) * 1000)
    return function


def fits(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> bool:
    """Whether the kernel computes this call (``query [B, H, 1, D]``, ``key``/``value``
    ``[B, KVH, L, D]``, ``mask`` ``[B, 1, 1, L]`` bool or None) as SDPA would."""
    tensors = (query, key, value)
    return (
        query.shape[2] == 1
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and all(t.stride(-1) == 1 for t in tensors)
        and key.shape[0] == query.shape[0]
        and query.shape[1] % key.shape[1] == 0
        and key.shape[-1] == query.shape[-1]
        and dropout == 0.0
        and not any(kwargs.get(name) is not None for name in UNSUPPORTED_KWARGS)
        and (
            mask is None
            or (
                mask.dtype == torch.bool
                and mask.shape[1:3] == (1, 1)
                and mask.shape[-1] == key.shape[2]
            )
        )
    )


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature; the output is ``[B, 1, H, D]`` like SDPA's."""
    function = kernel()
    if function is None or not fits(query, key, value, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    rows, heads, _, key_dim = query.shape
    kv_heads, length, value_dim = key.shape[1], key.shape[2], value.shape[-1]
    scale = scaling if scaling is not None else 1 / math.sqrt(key_dim)
    mask = None
    if attention_mask is not None:
        mask = attention_mask[:, 0, 0, :].expand(rows, length)  # [B, L]
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    out = query.new_empty((rows, 1, heads, value_dim))
    function(
        query.data_ptr(), key.data_ptr(), value.data_ptr(),
        mask.data_ptr() if mask is not None else None, out.data_ptr(),
        rows, heads, kv_heads, length, key_dim, value_dim, scale,
        query.stride(0), query.stride(1),
        key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
        mask.stride(0) if mask is not None else 0,
        out.stride(0), out.stride(2),
    )  # fmt: skip
    return out, None


def use_decode_attention(model: PreTrainedModel) -> bool:
    """Switch ``model`` from SDPA to :data:`NAME`; False (and unchanged) when it does not
    use SDPA or the kernel cannot be built."""
    if model.config._attn_implementation != "sdpa" or kernel() is None:
        return False
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return bool(model.config._attn_implementation == NAME)
