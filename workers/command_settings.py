"""The worker settings of a ``loraq serve`` or ``loraq demo`` command line.

Below both commands (:mod:`workers.cli`, :mod:`workers.demo_command`), so that each reads
its settings the same way without importing the other.
"""

from __future__ import annotations

import argparse
from typing import Any

from workers.settings import WorkerSettings


def settings_from(args: argparse.Namespace, **defaults: Any) -> WorkerSettings:
    """Worker settings: ``defaults``, then LORAQ_* and .env, then the command line."""
    names = ("redis_url", "prefix", "num_model_replicas", "num_consumer_replicas")
    overrides = {
        name: getattr(args, name)
        for name in (*names, "http_host", "http_port")
        if getattr(args, name, None) is not None
    }
    env_set = WorkerSettings().model_fields_set
    base = {name: value for name, value in defaults.items() if name not in env_set}
    return WorkerSettings(**{**base, **overrides})
