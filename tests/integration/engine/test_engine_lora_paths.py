"""The LoRA paths of a pass agree: stacked slots (one adapter or many), PEFT's plain and
per-row paths, and the two mixed in one pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from engine_kit import Kit, request, start_engine, stop_engine
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, DynamicCache

from workers.engine.cpu_layout import PackedLinear
from workers.engine.lora_model import BASE_ADAPTER, MultiLoraModel

NAMES = ["a", "b", BASE_ADAPTER, "a", "c", "d", "e", "b"]
# Enough rows per adapter that the stacked path groups them by slot (row_groups).
WIDE = NAMES * 5


def logits(model: MultiLoraModel, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    rows, width = ids.shape
    return model.last_logits(
        ids,
        attention_mask=torch.ones_like(ids),
        position_ids=torch.arange(width).expand(rows, width),
        cache=DynamicCache(config=model.config),
        adapter_names=names,
    )


def test_stacked_and_per_row_paths_match_each_row_alone(kit: Kit) -> None:
    model = MultiLoraModel(AutoModelForCausalLM.from_pretrained(kit.base).eval(), capacity=5)
    peft = MultiLoraModel(AutoModelForCausalLM.from_pretrained(kit.base).eval(), capacity=5)
    # Small ranks first, so that later loads widen the stacks of layers already stacked.
    for name in ["d", "a", "c", "b", "e"]:
        model.add(name, kit.adapters / name)
        peft.add_peft(name, kit.adapters / name)
    ids = torch.randint(4, 90, (len(WIDE), 7), generator=torch.Generator().manual_seed(0))
    # Plain LoRA goes into the stacked slots: a copy, no PEFT module at all.
    assert model.stacked_in_use and model.peft is None and model.peft_loads == 0
    assert not any(isinstance(m, LoraLayer) for m in model.base.modules())
    assert not peft.stacked_in_use
    check_paths(model, peft, ids[: len(NAMES)], NAMES)
    check_paths(model, peft, ids, WIDE)
    # A wide pass runs grouped: 40 rows in 6 blocks of 10 (inspection of a private part).
    logits(model, ids, WIDE)
    groups = model._stacked._groups
    assert groups is not None and (len(groups.slots), groups.size) == (6, 10)
    # Evicted adapters' slots change hands: "a" (q, v) takes the slot "c" (k, up) held.
    for loaded, add in ((model, model.add), (peft, peft.add_peft)):
        loaded.remove("a")
        loaded.remove("c")
        add("a", kit.adapters / "a")
        add("c", kit.adapters / "c")
    check_paths(model, peft, ids[: len(NAMES)], NAMES)
    check_paths(model, peft, ids, WIDE)


def test_stacked_and_peft_adapters_share_a_pass(kit: Kit) -> None:
    """PEFT wraps the base modules the stacked hooks sit on: both deltas still apply."""
    model = MultiLoraModel(AutoModelForCausalLM.from_pretrained(kit.base).eval(), capacity=5)
    assert model.adapter_bytes() == 0
    for name in ["a", "b", "d"]:
        model.add(name, kit.adapters / name)
    stacked = model.adapter_bytes()  # every slot of the stacks, allocated at once
    model.remove("d")
    assert stacked > 0 and model.adapter_bytes() == stacked
    model.add("d", kit.adapters / "d")
    for name in ["c", "e"]:
        model.add_peft(name, kit.adapters / name)
    assert model.is_stacked("a") and not model.is_stacked("c") and model.peft_loads == 2
    assert model.peft is not None
    peft_bytes = sum(p.nbytes for n, p in model.peft.named_parameters() if "lora_" in n)
    assert peft_bytes > 0 and model.adapter_bytes() == stacked + peft_bytes
    ids = torch.randint(4, 90, (len(NAMES), 7), generator=torch.Generator().manual_seed(1))
    mixed = logits(model, ids, NAMES)
    alone = torch.cat([logits(model, ids[i : i + 1], [n]) for i, n in enumerate(NAMES)])
    torch.testing.assert_close(mixed, alone, rtol=1e-4, atol=1e-4)


def check_paths(
    model: MultiLoraModel, peft: MultiLoraModel, ids: torch.Tensor, names: list[str]
) -> None:
    stacked = logits(model, ids, names)
    per_row = logits(peft, ids, names)
    alone = torch.cat([logits(peft, ids[i : i + 1], [n]) for i, n in enumerate(names)])
    stacked_alone = torch.cat([logits(model, ids[i : i + 1], [n]) for i, n in enumerate(names)])
    torch.testing.assert_close(stacked, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stacked_alone, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(per_row, alone, rtol=1e-4, atol=1e-4)
    # The adapters matter: a row's own adapter, not a neighbour's, made its logits.
    assert not torch.allclose(alone[0], logits(model, ids[:1], ["b"]), atol=1e-3)


def test_an_adapter_with_lora_bias_falls_back_to_peft_and_stays_correct(
    kit: Kit, tmp_path: Path
) -> None:
    torch.manual_seed(21)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], lora_bias=True, init_lora_weights=False
    )
    base = AutoModelForCausalLM.from_pretrained(kit.base)
    get_peft_model(base, config).save_pretrained(str(tmp_path / "biased"))
    engine = start_engine(kit.settings(adapters={"biased": str(tmp_path / "biased")}))
    packed = [m for m in engine.base_model.modules() if type(m) is PackedLinear]
    try:

        async def run() -> list[list[int]]:
            outputs = await asyncio.gather(
                engine.generate(request("biased", "with a bias", 10)),
                engine.generate(request("a", "without", 10)),
            )
            return [output.token_ids for output in outputs]

        biased, _ = asyncio.run(run())
        assert not engine._model.stacked_in_use  # PEFT's per-row path served the mixed pass
        # PEFT wrapped dense weights: the packed CPU layout was undone before it loaded.
        assert packed and not any(type(m) is PackedLinear for m in engine.base_model.modules())
        assert asyncio.run(engine.adapter_device_bytes()) == engine._model.adapter_bytes()
    finally:
        stop_engine(engine)
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(kit.base), str(tmp_path / "biased")
    ).eval()
    encoded = engine.tokenizer("with a bias", return_tensors="pt")  # type: ignore[operator]
    with torch.inference_mode():
        expected = reference.generate(**encoded, max_new_tokens=10, do_sample=False)
    assert biased == expected[0, encoded["input_ids"].shape[1] :].tolist()
