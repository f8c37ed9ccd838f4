"""An adapter's own chat template, read from the local folder it was resolved to.

A fine-tune often changes the chat format; its folder then carries the template it was
trained with (``chat_template.jinja``, or ``chat_template`` in ``tokenizer_config.json``,
as transformers saves it). Only a :class:`ResolvedAdapter`'s folder is read (one version,
local: a scanned folder, a registration, or the disk cache of an object store), never a
path a client sent. A version's files do not change, so each version is read once.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from schemas import ErrorType
from workers.adapters.resolved import ResolvedAdapter
from workers.errors import EngineError

TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Far above any real template (a few KiB); a bigger file is not read into memory.
MAX_TEMPLATE_BYTES = 1 << 20
CACHED_VERSIONS = 1024


def chat_template(adapter: ResolvedAdapter) -> str | None:
    """``adapter``'s own chat template; ``None`` when its folder has none."""
    return _template(adapter.key, adapter.folder)


@functools.lru_cache(maxsize=CACHED_VERSIONS)
def _template(key: str, folder: Path) -> str | None:
    jinja = folder / TEMPLATE_FILE
    if jinja.is_file():
        return _read(key, jinja)
    config = folder / TOKENIZER_CONFIG
    if not config.is_file():
        return None
    try:
        template = json.loads(_read(key, config)).get("chat_template")
    except (ValueError, AttributeError) as exc:
        raise _invalid(key, f"{TOKENIZER_CONFIG} is not a JSON object: {exc}") from None
    if isinstance(template, list):
        # transformers' named templates: the one named "default" renders plain chats.
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise _invalid(key, f"chat_template in {TOKENIZER_CONFIG} is not a string")
    return template or None


def _read(key: str, path: Path) -> str:
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise _invalid(key, f"{path.name} is over {MAX_TEMPLATE_BYTES} bytes")
    return path.read_text(encoding="utf-8")


def _invalid(key: str, problem: str) -> EngineError:
    return EngineError(ErrorType.INCOMPATIBLE_ADAPTER, f"adapter {key}: {problem}")
