"""Settings a model replica would fail on, checked before Redis or Ray start.

A replica that cannot build its engine fails inside Ray, after Serve's constructor retries,
and the cause lands in a replica's log file, not in ``loraq serve``'s output. What can be
known on the driver (the model is there, the adapter roots exist, the engine's and the
adapter source's libraries are installed) is checked here first, and refused in one line
that names the setting.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from workers.adapters.remote import EXTRAS
from workers.settings import WorkerSettings

# The module each adapter source scheme's fsspec implementation needs (see remote.EXTRAS).
SOURCE_MODULES = {
    "s3": "s3fs",
    "gs": "gcsfs",
    "az": "adlfs",
    "hf": "huggingface_hub",
    "http": "aiohttp",
    "https": "aiohttp",
}


class SettingError(ValueError):
    """A setting the replicas cannot start with; ``str()`` is one line naming it."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting


def check(settings: WorkerSettings) -> None:
    """Raise :class:`SettingError` for the first setting a replica would fail on."""
    _check_model(settings.model)
    _check_adapter_roots(settings)
    if settings.engine == "vllm" and not _installed("vllm"):
        raise SettingError(
            "LORAQ_ENGINE", "vllm is not installed (pip install 'loraq[vllm]'), or use hf"
        )
    if settings.adapter_source:
        _check_source(settings.adapter_source)


def invalid_settings(error: ValidationError) -> str:
    """Pydantic's errors of the worker settings in one line, each by its variable's name."""
    return "; ".join(
        f"LORAQ_{'.'.join(str(part) for part in item['loc']).upper()}: "
        f"{item['msg'].removeprefix('Value error, ')}"
        for item in error.errors()
    )


def _check_model(model: str) -> None:
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SettingError("LORAQ_MODEL", f"{model} has no config.json (not a model folder)")
        return
    # A path that looks like one (absolute, ./, ~, or more than org/name) is not a hub id.
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise SettingError("LORAQ_MODEL", f"no such folder: {model}")
    if _offline() and not _in_hub_cache(model):
        raise SettingError(
            "LORAQ_MODEL", f"{model} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hub cache holds ``repo_id``'s config.json (what from_pretrained reads
    first), without any network call."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id either
        return False
    return isinstance(found, str)


def _check_adapter_roots(settings: WorkerSettings) -> None:
    if settings.adapter_dir and not Path(settings.adapter_dir).expanduser().is_dir():
        raise SettingError("LORAQ_ADAPTER_DIR", f"no such folder: {settings.adapter_dir}")
    for name, folder in settings.adapters.items():
        if not Path(folder).expanduser().is_dir():
            raise SettingError("LORAQ_ADAPTERS", f"{name}: no such folder: {folder}")


def _check_source(source: str) -> None:
    scheme = urlsplit(source).scheme
    if scheme not in SOURCE_MODULES:
        raise SettingError(
            "LORAQ_ADAPTER_SOURCE", f"unknown scheme {scheme!r} (one of {', '.join(EXTRAS)})"
        )
    if not (_installed("fsspec") and _installed(SOURCE_MODULES[scheme])):
        raise SettingError(
            "LORAQ_ADAPTER_SOURCE",
            f"{scheme}:// needs the {EXTRAS[scheme]} extra (pip install 'loraq[{EXTRAS[scheme]}]')",
        )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
