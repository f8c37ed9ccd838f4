"""One-token decode attention on a CPU, behind transformers' attention interface.

Two things SDPA does badly for a decode step's query of one token, which this module's
attention function does instead. Only a model on a CPU is switched to it: on CUDA no
measurement has shown it better than transformers' own attention, which stays.

- **In float32**, PyTorch's flash-attention CPU kernel reads the keys and values at a
  fraction of what one core reads; the kernel of ``csrc/decode_attention.c`` reads each
  key and value column once, kv heads in place, close to a plain read of the same bytes
  (``bench/cpu_kernels.py`` measures both; its figures are in docs/SERVING.md, "Where our
  CPU step goes"). The kernel is built ahead of time or at start (:mod:`native`);
  without it, SDPA.
- **On a model of GQA heads** (Llama-3: 32 query heads over 8 kv heads), transformers'
  SDPA path copies the keys and values to every query head (``repeat_kv``) whenever a mask
  is passed, and a decode step of ours always passes one: four times the cache written
  and read again, every layer. Here the kernel reads each kv head in place, and where it
  does not run (half precision, or no kernel) SDPA gets the query heads of a kv head as
  that head's query positions (``[B, KVH, G, D]``: one token, so no causal order among
  them), which is the same attention without the copy.

:func:`use_decode_attention` switches a model from ``sdpa`` to ``loraq_decode``: a name
registered with transformers whose masks are SDPA's and whose calls take one of the two
ways above when they fit (one query token, a boolean mask per row or none, no dropout,
softcap, sinks or position bias), and SDPA's own otherwise, prefills included.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from workers.engine import native

log = logging.getLogger(__name__)
NAME = "loraq_decode"
# Keyword arguments of an attention call that change its result in ways the kernel does
# not compute (Gemma's softcap, gpt-oss's sinks, T5-style position biases).
UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")

_ARGUMENTS = (native.POINTER,) * 5 + (native.INT,) * 6 + (native.FLOAT,) + (native.INT,) * 11


def kernel() -> Any | None:
    """The kernel's C function, or None where it cannot be built."""
    return native.function("decode_attention", "loraq_decode_attention", _ARGUMENTS)


def fits(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> bool:
    """Whether this call (``query [B, H, 1, D]``, ``key``/``value`` ``[B, KVH, L, D]``,
    ``mask`` ``[B, 1, 1, L]`` bool or None) is a decode step this module computes as
    SDPA would."""
    return (
        query.shape[2] == 1
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


def on_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether the CPU kernel takes this decode step (the kernel itself aside)."""
    tensors = (query, key, value)
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1 for t in tensors
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
    if fits(query, key, value, attention_mask, dropout, kwargs):
        function = kernel() if on_kernel(query, key, value) else None
        if function is not None:
            return _on_kernel(function, query, key, value, attention_mask, scaling), None
        if query.shape[1] > key.shape[1]:
            return _grouped_sdpa(query, key, value, attention_mask, scaling), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _on_kernel(
    function: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
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
    return out


def _grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """SDPA over each kv head's query heads as its query positions: ``[B, 1, H, D]``."""
    rows, heads, _, _ = query.shape
    kv_heads = key.shape[1]
    # Query head h reads kv head h // G (repeat_kv's order), so [B, H, 1, D] splits into
    # [B, KVH, G, D]; the mask [B, 1, 1, L] broadcasts over both.
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, query.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped, key, value, attn_mask=attention_mask, scale=scaling
    )  # [B, KVH, G, Dv]
    return out.reshape(rows, 1, heads, value.shape[-1])


def use_decode_attention(model: PreTrainedModel) -> bool:
    """Switch ``model`` from SDPA to :data:`NAME`; False (and unchanged) when it does not
    use SDPA or is not on a CPU."""
    if model.config._attn_implementation != "sdpa" or model.device.type != "cpu":
        return False
    kernel()  # loaded (or built) now rather than in the first decode step
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    try:
        model.set_attn_implementation(NAME)
    except ValueError as error:  # a transformers that refuses registered names
        log.warning("decode attention not set (%s); the model keeps SDPA", error)
        return False
    return bool(model.config._attn_implementation == NAME)
