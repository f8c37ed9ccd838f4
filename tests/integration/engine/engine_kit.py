"""Builders for the engine tests: a random-initialised tiny Llama and random LoRA adapters.

The adapters have non-zero random weights (``init_lora_weights=False``) and differ in rank
and target modules, so a row served by the wrong adapter, or by none, gives other tokens.
The oracle is PEFT's own ``generate`` on a separately loaded model, one request at a time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import transformers

from schemas import GenerationParams
from tests.integration.resolving import Resolving
from workers.engine.engine import Engine
from workers.engine.model_loader import load_model
from workers.engine.requests import GenerationRequest
from workers.engine.synthetic import LlamaShape, LoraSpec, build_llama, build_lora
from workers.settings import WorkerSettings

transformers.utils.logging.disable_progress_bar()

ADAPTERS: dict[str, LoraSpec] = {
    "a": LoraSpec(rank=4, target_modules=("q_proj", "v_proj"), seed=1),
    "b": LoraSpec(rank=8, target_modules=("o_proj", "gate_proj", "down_proj"), seed=2),
    "c": LoraSpec(rank=16, target_modules=("k_proj", "up_proj"), seed=3),
    "d": LoraSpec(rank=2, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), seed=4),
    "e": LoraSpec(rank=6, target_modules=("gate_proj", "up_proj", "down_proj"), seed=5),
}
MAX_LORA_RANK = 32
# Logits of a random model with the default 0.02 init are nearly flat; a wider init keeps
# greedy choices clear of near-ties, so the oracle compares decisions, not rounding.
SHAPE = LlamaShape(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, initializer_range=0.15
)


@dataclass(frozen=True)
class Kit:
    """Where the test models live."""

    base: Path
    adapters: Path  # the scanned adapter_dir
    extra: Path  # another root, for run-time registrations and bad adapters

    def settings(self, **overrides: object) -> WorkerSettings:
        values: dict[str, object] = {
            "model": str(self.base),
            "adapter_dir": str(self.adapters),
            "adapters": {},
            "max_lora_rank": MAX_LORA_RANK,
            "max_adapters_per_replica": 8,
            "max_batch_size": 16,
            "batch_wait_ms": 20,
            "max_input_tokens": 64,
            "max_new_tokens": 48,
        }
        values.update(overrides)
        return WorkerSettings.model_validate(values)


def build_kit(root: Path) -> Kit:
    """Base model, five good adapters in the scanned folder, bad ones in another root."""
    base = build_llama(root / "base", shape=SHAPE, seed=0)
    for name, spec in ADAPTERS.items():
        build_lora(base, root / "adapters" / name, spec)
    extra = _bad_adapters(root, base, root / "adapters" / "a")
    return Kit(base=base, adapters=root / "adapters", extra=extra)


def _bad_adapters(kit_root: Path, base: Path, good: Path) -> Path:
    """Adapters the base cannot use, each wrong in one way."""
    extra = kit_root / "extra"
    build_lora(base, extra / "too-big", LoraSpec(rank=64, target_modules=("q_proj",), seed=9))
    shutil.copytree(good, extra / "no-such-module")
    config_path = extra / "no-such-module" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = ["q_proj", "wq_proj"]
    config_path.write_text(json.dumps(config))
    other_base = build_llama(kit_root / "other-base", shape=LlamaShape(hidden_size=32))
    build_lora(other_base, extra / "other-width", LoraSpec(4, ("q_proj", "v_proj"), seed=1))
    build_lora(base, extra / "late", LoraSpec(rank=3, target_modules=("v_proj",), seed=11))
    return extra


def start_engine(settings: WorkerSettings) -> Engine:
    return Resolving(Engine(settings, load_model(settings)), settings)  # type: ignore[return-value]


def stop_engine(engine: Engine) -> None:
    asyncio.run(engine.close())


Reference = Callable[[str | None, str, int], list[int]]


def request(
    adapter: str | None, prompt: str, max_new_tokens: int, **params: object
) -> GenerationRequest:
    """A request for ``adapter`` (None: base) with greedy decoding unless ``params`` say."""
    return GenerationRequest(
        adapter=adapter,
        prompt=prompt,
        params=GenerationParams.model_validate({"max_new_tokens": max_new_tokens, **params}),
    )
