"""The adapters bench's own parts: its adapter generator and its pure workload figures.

Nothing here measures speed; the bench itself is ``python -m bench.adapters``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bench.adapter_kit import WEIGHTS_FILE, generate_adapters
from bench.workloads import Workload, floor, longest_passover, lru_misses, sequence
from workers.adapters.validation import base_module_shapes, validate_adapter
from workers.settings import DEMO_DIR

BASE = DEMO_DIR / "model"
NAMES = [f"ad{index:04d}" for index in range(50)]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_adapters(BASE, tmp_path_factory.mktemp("kit"), 3, seed=5)


def test_generated_adapters_are_valid_for_the_demo_model(generated: dict[str, Path]) -> None:
    shapes = base_module_shapes(AutoModelForCausalLM.from_pretrained(BASE))
    assert list(generated) == ["ad0000", "ad0001", "ad0002"]
    for folder in generated.values():
        validate_adapter(folder, shapes, max_rank=8)


def test_generated_adapters_share_a_layout_but_not_weights(generated: dict[str, Path]) -> None:
    tensors = [load_file(str(folder / WEIGHTS_FILE)) for folder in generated.values()]
    first, *others = tensors
    for other in others:
        assert other.keys() == first.keys()
        assert all(other[name].shape == first[name].shape for name in first)
        assert not any(other[name].equal(first[name]) for name in first)


def test_generation_is_deterministic(generated: dict[str, Path], tmp_path: Path) -> None:
    again = generate_adapters(BASE, tmp_path, 3, seed=5)
    for name, folder in generated.items():
        assert (again[name] / WEIGHTS_FILE).read_bytes() == (folder / WEIGHTS_FILE).read_bytes()


def test_sequences_are_seeded_and_draw_from_their_pool() -> None:
    zipf = Workload("z", "zipf", 300, 20, seed=3)
    assert sequence(zipf, NAMES) == sequence(zipf, NAMES)
    assert sequence(zipf, NAMES) != sequence(Workload("z", "zipf", 300, 20, seed=4), NAMES)
    assert set(sequence(zipf, NAMES)) <= set(NAMES[:20])
    assert len(set(sequence(Workload("u", "uniform", 300, 8), NAMES))) == 8
    assert sequence(Workload("b", "base", 5), NAMES) == [None] * 5


def test_zipf_draws_some_adapters_much_more_than_others() -> None:
    drawn = sequence(Workload("z", "zipf", 1000, 50, seed=0), NAMES)
    counts = sorted((drawn.count(name) for name in set(drawn)), reverse=True)
    assert counts[0] > 10 * counts[-1]


def test_floor_counts_distinct_adapters_and_no_base_jobs() -> None:
    assert floor(["a", "b", "a", None, "c", None]) == 3
    assert floor([None, None]) == 0


def test_lru_misses_of_a_hand_worked_sequence() -> None:
    # Two slots: a b (2 misses), a hit, c evicts b (3), b evicts a (4), c hit, a (5).
    assert lru_misses(["a", "b", "a", "c", "b", "c", "a"], 2) == 5
    assert lru_misses(["a", None, "a", None], 1) == 1
    assert lru_misses(["a", "b", "c"] * 3, 3) == 3


def test_longest_passover() -> None:
    assert longest_passover([0.0, 1.0, 2.0]) == 0.0  # FIFO: nobody passed over
    # Job 0 started at 5 s, after job 1 (1 s): passed over for 4 s; job 1 for none.
    assert longest_passover([5.0, 1.0, 2.0]) == 4.0
    assert longest_passover([0.0, 3.0, 1.0, 2.0]) == 2.0
    assert longest_passover([]) == 0.0
