"""Decode attention: SDPA's results from the CPU kernel and from grouped SDPA, SDPA on the rest."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

from workers.engine import decode_attention as attention
from workers.engine import native
from workers.engine.decode_attention import NAME, decode_attention, use_decode_attention
from workers.engine.synthetic import LlamaShape, build_llama


class Attention(torch.nn.Module):
    """What transformers' attention functions read off the module."""

    is_causal = True

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None):
    """SDPA with the kv heads repeated, in the ``[B, 1, H, D]`` layout."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2)


def slot_views(rows: int, kv_heads: int, length: int, dim: int, value_dim: int):
    """Keys and values as the slot cache hands them out: views of wider buffers."""
    keys = torch.randn(rows + 3, kv_heads, length + 20, dim)
    values = torch.randn(rows + 3, kv_heads, length + 20, value_dim)
    return keys[:rows, :, :length], values[:rows, :, :length]


@pytest.fixture(autouse=True)
def built() -> None:
    """Where gcc is, the kernel must build."""
    if shutil.which("gcc") is None:
        pytest.skip("the kernel is built by gcc")
    assert attention.kernel() is not None


@pytest.mark.parametrize(
    ("rows", "heads", "kv_heads", "length", "dim", "value_dim"),
    [(3, 8, 8, 17, 64, 64), (5, 8, 2, 40, 32, 32), (1, 4, 4, 1, 16, 16), (4, 6, 3, 300, 64, 48)],
)
def test_it_computes_what_sdpa_computes(
    rows: int, heads: int, kv_heads: int, length: int, dim: int, value_dim: int
) -> None:
    torch.manual_seed(rows * length)
    query = torch.randn(rows, 1, heads, dim).transpose(1, 2)  # [B, H, 1, D], as Llama's
    key, value = slot_views(rows, kv_heads, length, dim, value_dim)
    keep = torch.rand(rows, length) > 0.3
    keep[:, -1] = True  # the new column is always seen
    module = Attention(heads // kv_heads)
    for mask in (keep[:, None, None, :], None):
        out, weights = decode_attention(module, query, key, value, mask)
        assert weights is None and out.shape == (rows, 1, heads, value_dim)
        torch.testing.assert_close(out, sdpa(query, key, value, mask), rtol=1e-5, atol=1e-5)


def test_a_row_gets_the_same_bits_alone_and_in_any_batch_on_any_threads() -> None:
    torch.manual_seed(0)
    query = torch.randn(6, 4, 1, 32)
    key, value = slot_views(6, 2, 50, 32, 32)
    mask = (torch.rand(6, 50) > 0.2)[:, None, None, :]
    module = Attention(2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        together, _ = decode_attention(module, query, key, value, mask)
        torch.set_num_threads(2)
        spread, _ = decode_attention(module, query, key, value, mask)
    finally:
        torch.set_num_threads(threads)
    alone, _ = decode_attention(module, query[3:4], key[3:4], value[3:4], mask[3:4])
    assert torch.equal(together, spread) and torch.equal(alone[0], together[3])


def test_a_row_with_every_column_masked_gets_zeros() -> None:
    query = torch.randn(2, 2, 1, 8)
    key, value = slot_views(2, 2, 5, 8, 8)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1] = False
    out, _ = decode_attention(Attention(1), query, key, value, mask)
    assert torch.equal(out[1], torch.zeros(1, 2, 8))
    torch.testing.assert_close(out[0], sdpa(query[:1], key[:1], value[:1], mask[:1])[0])


@pytest.mark.parametrize("case", ["prefill", "float_mask", "dropout"])
def test_calls_it_does_not_cover_go_to_sdpa(case: str) -> None:
    torch.manual_seed(1)
    length = 3 if case == "prefill" else 1
    query, key, value = (torch.randn(2, 4, n, 16) for n in (length, 9, 9))
    mask: torch.Tensor | None = torch.ones(2, 1, length, 9, dtype=torch.bool)
    dropout = 0.0
    if case == "float_mask":
        mask = torch.zeros(2, 1, 1, 9)
    elif case == "dropout":
        dropout = 0.5
    assert not attention.fits(query, key, value, mask, dropout, {})
    if case != "dropout":  # dropout draws random numbers: compare the others only
        out, _ = decode_attention(Attention(1), query, key, value, mask, dropout=dropout)
        expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        torch.testing.assert_close(out, expected.transpose(1, 2).contiguous())
    assert not attention.fits(query, key, value, None, 0.0, {"softcap": 30.0})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_off_the_kernel_gqa_heads_are_grouped_by_kv_head_not_repeated(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What CUDA and half precision take: SDPA over [B, KVH, G, D], no repeat_kv copy."""
    if dtype is torch.float32:  # as where the kernel did not build
        monkeypatch.setattr(attention, "kernel", lambda: None)
    torch.manual_seed(3)
    query = torch.randn(3, 1, 8, 16).transpose(1, 2).to(dtype)
    key, value = (t.to(dtype) for t in slot_views(3, 2, 11, 16, 16))
    mask = (torch.rand(3, 11) > 0.3)[:, None, None, :]
    mask[..., -1] = True

    def transformers_sdpa(*args: object, **kwargs: object) -> None:
        raise AssertionError("transformers' SDPA path (and its repeat_kv) ran")

    monkeypatch.setattr(attention, "sdpa_attention_forward", transformers_sdpa)
    out, _ = decode_attention(Attention(4), query, key, value, mask)
    expected = sdpa(query.float(), key.float(), value.float(), mask).to(dtype)
    tolerance = 2e-2 if dtype is torch.bfloat16 else 1e-5
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


def tiny_llamas(folder: Path) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Two copies of one small GQA Llama (4 query heads over 2 kv heads), on SDPA."""
    shape = LlamaShape(hidden_size=32, intermediate_size=64, num_key_value_heads=2)
    build_llama(folder, shape=shape, seed=2)
    return tuple(  # type: ignore[return-value]
        AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
        for _ in range(2)
    )


def test_a_model_switched_to_it_decodes_as_with_sdpa(tmp_path: Path) -> None:
    ours, theirs = tiny_llamas(tmp_path)
    assert use_decode_attention(ours) and ours.config._attn_implementation == NAME
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    logits = []
    with torch.inference_mode():
        for model in (ours, theirs):
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, attention_mask=mask, past_key_values=cache)
            step = model(
                input_ids=torch.tensor([[8], [9]]),
                attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                past_key_values=cache,
            )
            logits.append(step.logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_a_model_off_the_cpu_keeps_transformers_attention(tmp_path: Path) -> None:
    model, _ = tiny_llamas(tmp_path)
    model.to("meta")  # any device but the CPU: no weights needed to decide
    assert not use_decode_attention(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.fixture
def no_gcc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    native.library.cache_clear()
    native.function.cache_clear()
    yield
    monkeypatch.undo()
    native.library.cache_clear()
    native.function.cache_clear()


def test_without_gcc_decode_steps_run_on_sdpa(no_gcc: None, tmp_path: Path) -> None:
    assert attention.kernel() is None
    query, key, value = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    out, _ = decode_attention(Attention(1), query, key, value, None)
    torch.testing.assert_close(out, sdpa(query, key, value, None))
    test_a_model_switched_to_it_decodes_as_with_sdpa(tmp_path)  # GQA heads, grouped for SDPA
