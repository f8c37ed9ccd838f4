"""Column-major and packed linear weights: the same values and outputs, another layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from workers.engine.cpu_layout import (
    PackedLinear,
    column_major_linears,
    pack_linears,
    unpack_linears,
)
from workers.engine.synthetic import LlamaShape, build_llama

TIED = LlamaShape(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, tie_word_embeddings=True
)


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


def test_packed_linears_compute_the_same_and_unpack_to_the_same_weights() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    x = torch.randn(3, 5, 8)
    before = model(x)
    weights = [layer.weight.detach().clone() for layer in (model[0], model[2])]
    seen: list[torch.Size] = []
    model[2].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    assert pack_linears(model) == 2
    assert all(type(layer) is PackedLinear for layer in (model[0], model[2]))
    assert isinstance(model[0], nn.Linear) and model[0].weight.is_mkldnn
    assert column_major_linears(model) == 0  # packed modules keep their layout
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    assert seen == [torch.Size([3, 5, 4])]  # hooks on the module still fire
    assert unpack_linears(model) == 2
    for layer, weight in zip((model[0], model[2]), weights, strict=True):
        assert type(layer) is nn.Linear and torch.equal(layer.weight, weight)
        assert layer.weight.t().is_contiguous()  # back dense, column-major
    assert unpack_linears(model) == 0


def test_tied_and_half_precision_weights_are_not_packed() -> None:
    embedding, output = nn.Embedding(10, 6), nn.Linear(6, 10, bias=False)
    output.weight = embedding.weight
    half = nn.Linear(6, 6).to(torch.bfloat16)
    model = nn.ModuleDict({"embedding": embedding, "output": output, "bf16": half})
    assert pack_linears(model) == 0
    assert output.weight is embedding.weight and type(output) is nn.Linear
    assert embedding(torch.tensor([3])).shape == (1, 6)


def test_a_tied_output_layer_gets_a_packed_copy_and_the_embedding_keeps_its_rows(
    tmp_path: Path,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(build_llama(tmp_path, shape=TIED))
    assert model.lm_head.weight is model.get_input_embeddings().weight
    ids = torch.tensor([[5, 9, 17, 3]])
    with torch.inference_mode():
        before = model(ids).logits
    embedding = model.get_input_embeddings().weight.detach().clone()
    assert pack_linears(model) == 7 * TIED.num_hidden_layers + 1  # the output layer too
    assert type(model.lm_head) is PackedLinear and model.lm_head.weight.is_mkldnn
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # dense, untouched
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-5)
    assert unpack_linears(model) == 7 * TIED.num_hidden_layers + 1
    assert torch.equal(model.lm_head.weight, embedding)
