"""Column-major linear weights: the same values and outputs, another memory layout."""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.cpu_layout import column_major_linears


def test_linears_are_relaid_and_compute_the_same() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    x = torch.randn(3, 8)
    before = model(x)
    weights = [layer.weight.detach().clone() for layer in (model[0], model[2])]
    assert column_major_linears(model) == 2
    for layer, weight in zip((model[0], model[2]), weights, strict=True):
        assert layer.weight.shape == weight.shape and torch.equal(layer.weight, weight)
        assert layer.weight.t().is_contiguous() and not layer.weight.is_contiguous()
    assert torch.allclose(model(x), before, atol=1e-6)
    assert column_major_linears(model) == 0  # already laid out: nothing to do again


def test_an_embedding_tied_to_the_output_layer_stays_tied() -> None:
    embedding, output = nn.Embedding(10, 6), nn.Linear(6, 10, bias=False)
    output.weight = embedding.weight
    model = nn.ModuleDict({"embedding": embedding, "output": output})
    assert column_major_linears(model) == 1
    assert output.weight is embedding.weight
    assert embedding(torch.tensor([3])).shape == (1, 6)
