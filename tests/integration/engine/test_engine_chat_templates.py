"""An adapter folder's own chat template renders that adapter's messages; others use the
base model's, in the same batch."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_kit import Kit, start_engine, stop_engine
from transformers import AutoTokenizer

from schemas import ErrorType, GenerationParams, Message
from workers.adapters.resolved import ResolvedAdapter
from workers.engine.chat_templates import chat_template
from workers.engine.engine import Engine
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest

# Unlike the base model's template: a row rendered with the wrong one has another length.
OWN = (
    "{% for m in messages %}[[{{ m['role'] | upper }}]] {{ m['content'] }} //\n{% endfor %}"
    "{% if add_generation_prompt %}[[ANSWER]] {% endif %}"
)
MESSAGES = [Message(role="system", content="be short"), Message(role="user", content="hello")]


@pytest.fixture(scope="module")
def templated(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine over copies of adapter ``a``: with the template as a file, in
    tokenizer_config.json, with none, and with one that does not parse."""
    root = tmp_path_factory.mktemp("templated")
    for name in ("own-file", "own-config", "plain", "broken"):
        shutil.copytree(kit.adapters / "a", root / name)
    (root / "own-file" / "chat_template.jinja").write_text(OWN)
    config = {
        "chat_template": [{"name": "default", "template": OWN}, {"name": "x", "template": ""}]
    }
    (root / "own-config" / "tokenizer_config.json").write_text(json.dumps(config))
    (root / "broken" / "chat_template.jinja").write_text("{% for m in messages %}")
    engine = start_engine(kit.settings(adapter_dir=str(root)))
    yield engine
    stop_engine(engine)


def chat(adapter: str) -> GenerationRequest:
    params = GenerationParams(max_new_tokens=12)
    return GenerationRequest(adapter=adapter, messages=list(MESSAGES), params=params)


async def test_each_adapter_renders_with_its_own_template_or_the_bases(
    templated: Engine, kit: Kit
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(kit.base)
    dumped = [m.model_dump() for m in MESSAGES]

    def length(template: str | None) -> int:
        text = tokenizer.apply_chat_template(
            dumped, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    outputs: list[GenerationOutput] = await asyncio.gather(
        *(templated.generate(chat(name)) for name in ("own-file", "plain", "own-config"))
    )
    own_file, plain, own_config = outputs
    assert length(OWN) != length(None)
    assert own_file.prompt_tokens == own_config.prompt_tokens == length(OWN)
    assert plain.prompt_tokens == length(None)
    assert own_file.token_ids == own_config.token_ids  # same weights, same prompt
    with pytest.raises(EngineError) as caught:
        await templated.generate(chat("broken"))
    assert caught.value.type is ErrorType.INCOMPATIBLE_ADAPTER
    assert "chat template" in str(caught.value)


def test_a_template_file_is_read_once_per_version(tmp_path: Path, kit: Kit) -> None:
    folder = tmp_path / "x"
    shutil.copytree(kit.adapters / "a", folder)
    assert chat_template(ResolvedAdapter.local("x", folder)) is None
    (folder / "chat_template.jinja").write_text(OWN)
    # A new file is a new version of a local folder: read, not the cached None.
    assert chat_template(ResolvedAdapter.local("x", folder)) == OWN
