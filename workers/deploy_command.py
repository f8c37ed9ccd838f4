"""Deploy for a command (``loraq serve``, ``loraq demo``), or say in one line why not.

A new user's first mistakes (a bad value, a model folder that is not there, a replica
that cannot start, a Ray that does not start) end with the cause on one line and exit
code 2, not a traceback of Ray's or pydantic's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from workers import launch
from workers.command_settings import settings_from
from workers.preflight import SettingError, invalid_settings
from workers.settings import WorkerSettings

# Exit code of a command that could not start what it was asked to.
CANNOT_START = 2


def settings_or_say_why(
    args: argparse.Namespace, say: Callable[[str], None], **defaults: Any
) -> WorkerSettings | None:
    """The settings of ``args`` over ``defaults``, or ``None`` once ``say`` was given the
    one line that names the bad values."""
    try:
        return settings_from(args, **defaults)
    except ValidationError as error:
        say(f"cannot serve: {invalid_settings(error)}")
        return None


def deploy_or_say_why(
    settings: WorkerSettings, say: Callable[[str], None], **deploy_options: Any
) -> launch.Running | None:
    """The application deployed (:func:`workers.launch.deploy` with ``deploy_options``),
    or ``None`` once ``say`` was given the one line that says why it could not be."""
    try:
        return launch.deploy(settings, **deploy_options)
    except (SettingError, launch.StartFailed) as error:
        say(f"cannot serve: {error}")
        return None
