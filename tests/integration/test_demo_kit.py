"""The committed demo kit loads through the plain from_pretrained paths and meets its bars.

Bars (on the 200 held-out inputs of demo.tasks): each adapter >= 95% exact match on its own task,
the base model >= 95% on echo, and the base model and every other adapter < 5% on each adapter's
task, so that a job routed to the wrong adapter is caught by its output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from demo.evaluate import BASE, ECHO, AccuracyMatrix, accuracy_matrix, format_matrix, load_kit
from demo.tasks import ADAPTER_RULES, heldout_inputs, is_discriminating, training_inputs

DEMO = Path(__file__).resolve().parents[2] / "demo"
MODEL_DIR = DEMO / "model"
ADAPTERS_DIR = DEMO / "adapters"
OWN_TASK_MIN = 0.95
OTHER_TASK_MAX = 0.05
MAX_KIT_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def kit() -> tuple[PeftModel, PreTrainedTokenizerBase, list[str]]:
    # The kit must load with the hub unreachable: anything that tries to download fails here.
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    return load_kit(MODEL_DIR, ADAPTERS_DIR)


@pytest.fixture(scope="module")
def matrix(kit: tuple[PeftModel, PreTrainedTokenizerBase, list[str]]) -> AccuracyMatrix:
    model, tokenizer, names = kit
    # A model this small gains nothing from intra-op threads, and on busy shared cores their
    # spin-waits make generation several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return accuracy_matrix(model, tokenizer, names, heldout_inputs())
    finally:
        torch.set_num_threads(threads)


def test_kit_holds_every_adapter_task(
    kit: tuple[PeftModel, PreTrainedTokenizerBase, list[str]],
) -> None:
    _, _, names = kit
    assert sorted(names) == sorted(ADAPTER_RULES)


def test_each_adapter_and_the_base_meet_their_bars(
    matrix: AccuracyMatrix,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    table = format_matrix(matrix)
    record_property("accuracy_matrix", json.dumps(matrix))
    with capsys.disabled():
        print(f"\ndemo kit exact match on {len(heldout_inputs())} held-out inputs (%):\n{table}")
    assert matrix[BASE][ECHO] >= OWN_TASK_MIN, f"base model on echo\n{table}"
    for name in ADAPTER_RULES:
        assert matrix[name][name] >= OWN_TASK_MIN, f"adapter {name} on its task\n{table}"


def test_no_other_model_passes_an_adapter_task(matrix: AccuracyMatrix) -> None:
    table = format_matrix(matrix)
    for task in ADAPTER_RULES:
        for model_name, row in matrix.items():
            if model_name != task:
                assert row[task] < OTHER_TASK_MAX, f"{model_name} passes {task}\n{table}"


def test_heldout_inputs_are_distinct_discriminating_and_unseen() -> None:
    heldout = heldout_inputs()
    assert len(heldout) == len(set(heldout)) == 200
    assert all(is_discriminating(text) for text in heldout)
    stream = training_inputs(seed=0)
    assert not set(heldout) & {next(stream) for _ in range(20_000)}


def test_prompt_is_a_complete_input_and_chat_template_matches() -> None:
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    ids = tokenizer("hi yo")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "h", "i", " ", "y", "o", "<sep>"]
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi yo"}], add_generation_prompt=True
    )
    assert isinstance(chat, BatchEncoding)
    assert chat["input_ids"] == ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi yo"
    assert tokenizer.padding_side == "left"


def test_adapters_differ_in_rank_and_targets_and_name_no_absolute_base() -> None:
    configs = [
        json.loads((folder / "adapter_config.json").read_text())
        for folder in sorted(ADAPTERS_DIR.iterdir())
    ]
    assert all(config["peft_type"] == "LORA" for config in configs)
    assert len({config["r"] for config in configs}) == len(configs)
    assert len({tuple(config["target_modules"]) for config in configs}) == len(configs)
    assert all(not Path(config["base_model_name_or_path"]).is_absolute() for config in configs)


def test_kit_fits_in_ten_megabytes() -> None:
    files = [path for folder in (MODEL_DIR, ADAPTERS_DIR) for path in folder.rglob("*")]
    assert sum(path.stat().st_size for path in files if path.is_file()) <= MAX_KIT_BYTES
