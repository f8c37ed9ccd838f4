"""Linear weights laid out for decode steps on a CPU.

``nn.Linear`` keeps its weight ``[out, in]`` row-major and computes ``x @ W.T`` through the
CPU BLAS, which runs the few rows of a decode step well below the machine's speed. Two
layouts do better, with the same values:

- **Packed** (float32, oneDNN): the weight is reordered once into oneDNN's blocked layout
  and the module's products run through oneDNN's linear, the path PyTorch's own
  inductor "freezing" takes: faster than column-major from a few rows up, about even at
  one row (``bench/cpu_kernels.py``; figures in docs/SERVING.md, "Where our CPU step
  goes").
  The packed tensor replaces the dense one (the same bytes), so a packed module's weight
  is an MKL-DNN tensor: only its own forward reads it. PEFT's layers read base weights
  (DoRA's norms, for one), so :func:`unpack_linears` gives every module its dense weight
  back before PEFT wraps any (the stacked LoRA hooks need no weight values).
- **Column-major** (other float dtypes, or packing turned off): ``W.t().contiguous().t()``
  makes ``W.T`` the contiguous operand, which the BLAS multiplies faster for few rows.
  Every module still sees the same ``[out, in]`` tensor.

CUDA's BLAS takes either dense layout alike; nothing here runs there. Weights shared by
two modules and quantized layers (bitsandbytes subclasses with their own parameter types)
keep their own layout, but for one: a model's output layer tied to its input embedding
(SmolLM2, Qwen2.5-0.5B, Llama-3.2-1B) gets a packed copy of its own, since the embedding
must keep reading rows of the dense one. That costs the vocabulary matrix once more
(113 MB for SmolLM2-135M in float32, 545 MB for Qwen2.5-0.5B) and buys the product over a
50k-150k vocabulary, a fifth to a quarter of a step's weights, at the packed speed: the
product alone 1.75-2.4x faster than column-major at 16 and 64 rows, the output layer of a
SmolLM2-shaped step 3.7-4.2x (docs/SERVING.md, "Real shapes").
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is in oneDNN's packed layout (see the module doc).

    Made only by :func:`pack_linears`, which swaps the class of existing modules (hooks,
    names and ``isinstance`` checks stay as they were)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            input, self.weight, self.bias, "none", [], ""
        )
        return out


def pack_linears(model: nn.Module) -> int:
    """Pack the weight of every plain float32 ``nn.Linear`` of ``model`` on the CPU (not
    tied to another module's); returns how many. Without oneDNN, nothing is packed."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    count = 0
    for module in [*_own_weight_linears(model), *_tied_output(model)]:
        weight = module.weight
        if weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            # A tied output layer's weight stays the embedding's: this is its own copy.
            module.weight = nn.Parameter(packed, requires_grad=False)
            module.__class__ = PackedLinear
            count += 1
    return count


def _tied_output(model: nn.Module) -> list[nn.Linear]:
    """The output layer of a model that names one (``get_output_embeddings``), when its
    weight is its input embedding's."""
    output_of = getattr(model, "get_output_embeddings", None)
    input_of = getattr(model, "get_input_embeddings", None)
    if output_of is None or input_of is None:
        return []
    output, embedding = output_of(), input_of()
    if type(output) is not nn.Linear or type(output.weight) is not nn.Parameter:
        return []
    return [output] if output.weight is getattr(embedding, "weight", None) else []


def unpack_linears(model: nn.Module) -> int:
    """Give every :class:`PackedLinear` of ``model`` its dense weight back (column-major,
    see the module doc) and its ``nn.Linear`` class; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is PackedLinear:
            dense = module.weight.detach().to_dense()
            module.weight = nn.Parameter(dense.t().contiguous().t(), requires_grad=False)
            module.__class__ = nn.Linear  # type: ignore[assignment]
            count += 1
    return count


def column_major_linears(model: nn.Module) -> int:
    """Re-lay the weight of every plain float ``nn.Linear`` of ``model`` (packed ones
    aside) out column-major; returns how many. A tied weight stays tied: only its data
    moves."""
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or isinstance(module, PackedLinear):
            continue
        if type(weight) is not nn.Parameter:  # bitsandbytes' own parameter types
            continue
        if weight.dtype.is_floating_point and weight.dim() == 2 and weight.is_contiguous():
            weight.data = weight.data.t().contiguous().t()
            count += 1
    return count


def _own_weight_linears(model: nn.Module) -> list[nn.Linear]:
    """``nn.Linear`` modules, subclasses aside, with a plain ``Parameter`` weight that no
    other module of ``model`` holds."""
    holders = Counter(id(p) for module in model.modules() for p in module.parameters(recurse=False))
    return [
        module
        for module in model.modules()
        if type(module) is nn.Linear
        and type(module.weight) is nn.Parameter
        and holders[id(module.weight)] == 1
    ]
