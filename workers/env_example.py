"""Write ``.env.example`` from the settings classes: ``python -m workers.env_example``.

The file lists every ``LORAQ_*`` setting with its description and default; it is checked
in and a test fails when it is stale, so it cannot drift from ``WorkerSettings``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from producer.settings import DEMO_DIR
from workers.settings import WorkerSettings

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"

HEADER = """\
# Every loraq setting (workers/settings.py) with its default, commented out: copy this
# file to .env and uncomment what you change. Written by `python -m workers.env_example`.
# docker-compose.yml reads .env into the worker and sets LORAQ_REDIS_URL and
# LORAQ_HTTP_HOST itself.
"""


def env_value(value: Any) -> str:
    """``value`` as pydantic-settings parses it back from the environment."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _entry(name: str, field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    note = field.description or ""
    # A default inside the installed package is a path of this machine: say what it is.
    if isinstance(default, str) and default.startswith(str(DEMO_DIR)):
        where = Path(default).relative_to(DEMO_DIR.parent).as_posix()
        note = f"{note} Default: the bundled demo kit ({where})."
        default = None
    elif default is None:
        note = f"{note} Default: unset."
    return f"# {note.strip() or name}\n# LORAQ_{name.upper()}={env_value(default)}\n"


def render() -> str:
    """The expected content of ``.env.example``."""
    entries = [_entry(name, field) for name, field in WorkerSettings.model_fields.items()]
    return HEADER + "\n" + "\n".join(entries)


def main() -> int:
    """Write the file when it changed."""
    text = render()
    if not ENV_EXAMPLE.exists() or ENV_EXAMPLE.read_text() != text:
        ENV_EXAMPLE.write_text(text)
        print(f"wrote {ENV_EXAMPLE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
