"""Fixtures of the engine tests: the test model kit, an engine per module, PEFT's oracle."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from engine_kit import Kit, Reference, build_kit, start_engine, stop_engine
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.engine.engine import Engine


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """Base model, five good adapters in the scanned folder, bad ones in another root."""
    return build_kit(tmp_path_factory.mktemp("engine-kit"))


@pytest.fixture(scope="module")
def engine(kit: Kit) -> Iterator[Engine]:
    """One engine per test module, with room for every good adapter."""
    engine = start_engine(kit.settings())
    yield engine
    stop_engine(engine)


@pytest.fixture(scope="session")
def oracle_model(kit: Kit) -> Callable[[str | None], torch.nn.Module]:
    """PEFT's model of one adapter (None: the base), loaded apart from any engine."""
    models: dict[str | None, torch.nn.Module] = {}

    def model_for(adapter: str | None) -> torch.nn.Module:
        if adapter not in models:
            base = AutoModelForCausalLM.from_pretrained(kit.base).eval()
            folder = kit.adapters / adapter if adapter else None
            models[adapter] = PeftModel.from_pretrained(base, folder).eval() if folder else base
        return models[adapter]

    return model_for


@pytest.fixture(scope="session")
def reference(kit: Kit, oracle_model: Callable[[str | None], torch.nn.Module]) -> Reference:
    """PEFT's own greedy ``generate`` for one adapter (None: base) and one prompt alone."""
    tokenizer = AutoTokenizer.from_pretrained(kit.base)
    model_for = oracle_model
    results: dict[tuple[str | None, str, int], list[int]] = {}

    def generate(adapter: str | None, prompt: str, max_new_tokens: int) -> list[int]:
        key = (adapter, prompt, max_new_tokens)
        if key not in results:
            encoded = tokenizer(prompt, return_tensors="pt")
            with torch.inference_mode():
                output = model_for(adapter).generate(
                    **encoded, max_new_tokens=max_new_tokens, do_sample=False
                )
            results[key] = output[0, encoded["input_ids"].shape[1] :].tolist()
        return results[key]

    return generate
