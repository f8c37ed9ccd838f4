"""A mixed batch for structured output: 8 adapters, half the rows constrained.

The test model is the char-level synthetic Llama (its vocabulary is printable ASCII, so
any JSON can be spelt); its weights are random, so the schemas bound every string,
number and array: the grammar then ends each constrained row within its token budget.
Shared by the HF engine, vLLM, queue and OpenAI-client tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from schemas import GenerationParams
from workers.engine.synthetic import LlamaShape, LoraSpec, build_llama, build_lora

ADAPTERS = [f"s{i}" for i in range(8)]
MODULES = (("q_proj", "v_proj"), ("o_proj", "down_proj"), ("k_proj", "up_proj"), ("gate_proj",))
# head_dim 32: a size vLLM's CPU attention takes.
SHAPE = LlamaShape(hidden_size=128, intermediate_size=256, initializer_range=0.15)
SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age", "ok"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"label": {"enum": ["spam", "ham", "other"]}, "note": {"type": "null"}},
        "required": ["label"],
    },
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "k": {"type": "string", "maxLength": 5},
                        "v": {"type": "integer", "minimum": -9, "maximum": 99},
                    },
                    "required": ["k", "v"],
                },
                "maxItems": 3,
            }
        },
        "required": ["items"],
    },
    {
        "type": "array",
        "items": {"anyOf": [{"enum": [1, 2, 3, "x"]}, {"type": "boolean"}]},
        "minItems": 1,
        "maxItems": 4,
    },
]
CHOICES = ["yes", "no", "maybe so"]
ROWS = 64
MAX_NEW_TOKENS = 96


def build_models(root: Path) -> tuple[Path, Path]:
    """The base model and the folder of the 8 adapters."""
    base = build_llama(root / "base", shape=SHAPE, seed=0)
    for index, name in enumerate(ADAPTERS):
        spec = LoraSpec(rank=4 + index % 3 * 2, target_modules=MODULES[index % 4], seed=index + 1)
        build_lora(base, root / "adapters" / name, spec)
    return base, root / "adapters"


def response_format(row: int) -> dict[str, Any] | None:
    """Row ``row``'s format: odd rows free; of the even ones, one in four a choice, the
    others one of the four schemas."""
    if row % 2:
        return None
    if row % 8 == 6:
        return {"type": "choice", "choices": CHOICES}
    schema = SCHEMAS[row // 2 % 4]
    return {"type": "json_schema", "json_schema": {"name": f"s{row // 2 % 4}", "schema": schema}}


def row_params(row: int) -> GenerationParams:
    """Greedy free rows (compared with their run alone); constrained rows half seeded."""
    sampled = row % 4 == 2
    return GenerationParams.model_validate(
        {
            "max_new_tokens": MAX_NEW_TOKENS,
            "temperature": 0.9 if sampled else 0.0,
            "seed": row if sampled else None,
            "response_format": response_format(row),
        }
    )


def row_adapter(row: int) -> str:
    return ADAPTERS[row % len(ADAPTERS)]


def row_prompt(row: int) -> str:
    return f"row {row}: answer"


def check_constrained(row: int, text: str) -> None:
    """The text of a constrained row parses and validates against its format."""
    fmt = response_format(row)
    assert fmt is not None
    if fmt["type"] == "choice":
        assert text in CHOICES, (row, text)
        return
    jsonschema.validate(json.loads(text), fmt["json_schema"]["schema"])
