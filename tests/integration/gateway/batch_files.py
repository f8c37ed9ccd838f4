"""Batch input files for the Batch API tests: good lines over the adapters and the base
model, with the output each must give, and bad lines that must fail alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from demo.tasks import ADAPTER_RULES, expected_output, heldout_inputs
from schemas.batches import BatchEndpoint
from tests.integration.gateway.conftest import MAX_NEW_TOKENS

ADAPTERS = ["upper", "rot13", "title"]
assert set(ADAPTERS) <= set(ADAPTER_RULES)
# Lines that cannot run, and a word each error message must contain.
BAD_LINES: list[tuple[bytes, str]] = [
    (b"{not json", "not JSON"),
    (b'{"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}}', "url"),
    (
        b'{"custom_id": "bad-body", "method": "POST", "url": "/v1/completions", '
        b'"body": {"model": "upper", "prompt": "ab", "max_tokens": -1}}',
        "max_tokens",
    ),
    (b'{"method": "POST", "url": "/v1/completions", "body": {"model": "upper"}}', "custom_id"),
    (
        b'{"custom_id": "bad-model", "method": "POST", "url": "/v1/completions", '
        b'"body": {"model": "no-such-adapter", "prompt": "ab", "max_tokens": 4}}',
        "no-such-adapter",
    ),
]


@dataclass
class BatchFile:
    """A JSONL input file and what its good lines must answer, by ``custom_id``."""

    content: bytes
    expected: dict[str, str]
    bodies: dict[str, dict[str, object]]


def completions_file(
    base_model: str,
    lines: int = 200,
    *,
    bad: bool = True,
    prompts: Sequence[str] | None = None,
    max_tokens: int = MAX_NEW_TOKENS,
    endpoint: BatchEndpoint = "/v1/completions",
) -> BatchFile:
    """``lines`` completions (or chat completions, one user message each) over three
    adapters and the base model (plus the bad lines), on ``prompts`` (default: the kit's
    held-out inputs)."""
    inputs = prompts or heldout_inputs()
    models: list[str | None] = [*ADAPTERS, None]
    rows: list[bytes] = []
    expected: dict[str, str] = {}
    bodies: dict[str, dict[str, object]] = {}
    for i in range(lines):
        adapter, prompt = models[i % len(models)], inputs[i % len(inputs)]
        custom_id = f"req-{i}"
        body: dict[str, object] = {
            "model": adapter or base_model,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if endpoint == "/v1/completions":
            body["prompt"] = prompt
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
        rows.append(
            orjson.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
        )
        expected[custom_id] = expected_output(adapter, prompt)
        bodies[custom_id] = body
        if bad and i % 40 == 7 and i // 40 < len(BAD_LINES):
            rows.append(BAD_LINES[i // 40][0])
    return BatchFile(b"\n".join(rows) + b"\n", expected, bodies)


def answer_text(body: Any) -> str:
    """The generated text of a (chat) completion response body."""
    choice = body["choices"][0]
    text: str = (
        choice["text"] if body["object"] == "text_completion" else choice["message"]["content"]
    )
    return text
