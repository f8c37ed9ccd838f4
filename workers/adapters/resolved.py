"""What a backend is given for an adapter: one version of it, in a local folder.

The catalogue and the resolver above the backends make these; a benchmark or a test that
drives a backend directly makes one for a local folder with :meth:`ResolvedAdapter.local`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from workers.adapters.registry import CONFIG_FILE

# The files of a PEFT folder that the tiers read (and the object store fetches).
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Fetched when present: an adapter's own chat template and tokenizer settings.
OPTIONAL_FILES = ("chat_template.jinja", "tokenizer_config.json")
ADAPTER_FILES = (CONFIG_FILE, *WEIGHTS_FILES, *OPTIONAL_FILES)


@dataclass(frozen=True)
class ResolvedAdapter:
    """One version of an adapter, in a local folder.

    ``key`` names it in every tier (host, device, vLLM): a new version is a new key, so
    old and new bytes never mix, and rows already running keep theirs.
    """

    name: str
    version: str
    folder: Path

    @property
    def key(self) -> str:
        """``name@version`` (a name never holds '@')."""
        return f"{self.name}@{self.version}"

    @classmethod
    def local(cls, name: str, folder: Path) -> ResolvedAdapter:
        """``name`` served from the local ``folder`` (already checked to be allowed)."""
        return cls(name, local_version(folder), folder)


def name_of(key: str) -> str:
    """The adapter name of a tier key (``name@version``)."""
    return key.split("@", 1)[0]


def local_version(folder: Path) -> str:
    """The version of a local folder: its path and its files' sizes and change times, so
    a re-pointed registration or a file replaced in place is a new version."""
    parts = [str(folder)]
    for name in ADAPTER_FILES:
        try:
            stat = (folder / name).stat()
        except OSError:
            continue
        parts.append(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
