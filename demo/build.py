"""Rebuild the demo kit: ``python -m demo.build [--out DIR] [--jobs N]``.

Trains a small Llama to echo its input, then one LoRA adapter per task of ``demo.tasks`` on top
of the frozen base, and prints the exact-match matrix on the held-out inputs. Seeded and
deterministic: every training process runs on one thread, so the weights do not depend on how
many cores the machine has; ``--jobs`` only sets how many adapters train side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from demo.evaluate import MAX_NEW_TOKENS, accuracy_matrix, format_matrix, load_kit
from demo.tasks import ADAPTER_RULES, ALPHABET, BASE_RULE, ECHO_ALPHABET, heldout_inputs
from demo.tokenizer import MODEL_MAX_LENGTH, build_tokenizer
from demo.training import TrainPlan, task_batches, train

DEMO_DIR = Path(__file__).resolve().parent
# What adapter_config.json names as its base: relative to the repository root, never a hub id.
BASE_MODEL_REF = "demo/model"
SEED = 1234
BASE_PLAN = TrainPlan(steps=400, learning_rate=4e-3)


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of the kit: its task (a key of ADAPTER_RULES), LoRA shape and training."""

    name: str
    rank: int
    alpha: int
    target_modules: tuple[str, ...]
    plan: TrainPlan
    seed: int


# Different ranks, scalings and target modules, so that mixed batches meet real variety.
ADAPTERS = (
    AdapterSpec(
        "reverse", 16, 32, ("q_proj", "k_proj", "v_proj", "o_proj"), TrainPlan(400, 5e-3), 11
    ),
    AdapterSpec("rot13", 4, 8, ("gate_proj", "up_proj", "down_proj"), TrainPlan(250, 5e-3), 12),
    AdapterSpec("upper", 8, 16, ("q_proj", "v_proj"), TrainPlan(200, 5e-3), 13),
    AdapterSpec(
        "title",
        12,
        12,
        ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj"),
        TrainPlan(200, 5e-3),
        14,
    ),
)


def base_config(vocab_size: int, *, bos: int, eos: int, pad: int) -> LlamaConfig:
    """The base model's shape: 4 layers, hidden 128, 4 query heads over 2 key/value heads."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def seed_everything(seed: int) -> None:
    """One thread and fixed seeds: the same weights on every run and every machine size."""
    torch.set_num_threads(1)
    random.seed(seed)
    torch.manual_seed(seed)


def build_base(model_dir: Path) -> None:
    """Train the echo base model and save it with its tokenizer into ``model_dir``."""
    seed_everything(SEED)
    tokenizer = build_tokenizer()
    config = base_config(
        len(tokenizer),
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # Upper-case letters and digits too: the base must already be able to emit every character.
    batches = task_batches(
        tokenizer,
        BASE_RULE,
        seed=SEED,
        batch_size=BASE_PLAN.batch_size,
        alphabets=(ALPHABET, ECHO_ALPHABET),
    )
    loss = train(model, batches, BASE_PLAN, description="base (echo)")
    logging.info("base: final loss %.4f", loss)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def build_adapter(spec: AdapterSpec, model_dir: Path, adapter_dir: Path) -> float:
    """Train one LoRA adapter on the saved base and save it as a PEFT folder; returns its loss."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(spec.seed)
    tokenizer = build_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # PEFT copies this into adapter_config.json; the loader passes the base model itself.
    base.name_or_path = BASE_MODEL_REF
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    batches = task_batches(
        tokenizer, ADAPTER_RULES[spec.name], seed=spec.seed, batch_size=spec.plan.batch_size
    )
    loss = train(model, batches, spec.plan, description=f"adapter {spec.name}")
    model.save_pretrained(str(adapter_dir))
    # PEFT writes a placeholder model card; the kit's README describes the adapters instead.
    (adapter_dir / "README.md").unlink(missing_ok=True)
    sort_target_modules(adapter_dir / "adapter_config.json")
    return loss


def sort_target_modules(config_path: Path) -> None:
    """Rewrite ``target_modules`` in sorted order.

    PEFT keeps them in a set and saves them in its iteration order, which changes with Python's
    hash seed: sorting makes the file byte-for-byte the same on every build.
    """
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def build_adapters(out: Path, jobs: int) -> None:
    """Train every adapter of ``ADAPTERS``, ``jobs`` processes at a time (longest first)."""
    model_dir, adapters_dir = out / "model", out / "adapters"
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            spec.name: pool.submit(build_adapter, spec, model_dir, adapters_dir / spec.name)
            for spec in sorted(ADAPTERS, key=lambda spec: -spec.plan.steps)
        }
        for name, future in futures.items():
            logging.info("adapter %s: final loss %.4f", name, future.result())


def evaluate(out: Path) -> None:
    """Print the held-out exact-match matrix of the kit just built."""
    model, tokenizer, names = load_kit(out / "model", out / "adapters")
    matrix = accuracy_matrix(model, tokenizer, names, heldout_inputs())
    print(format_matrix(matrix))
    print(json.dumps(matrix))


def main() -> None:
    """Build the kit into ``--out`` (default: this package's folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--jobs", type=int, default=2, help="adapters trained side by side")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    for folder in ("model", "adapters"):
        shutil.rmtree(args.out / folder, ignore_errors=True)
    build_base(args.out / "model")
    build_adapters(args.out, args.jobs)
    logging.info("trained in %.0f s", time.monotonic() - started)
    evaluate(args.out)
    logging.info("built in %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
