"""Worker verbs of the ``loraq`` command: ``serve`` and ``demo``.

``producer.cli`` calls :func:`register` when the worker extra is installed, so that a
producer-only install has a ``loraq`` command without Ray or torch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

from workers.command_settings import settings_from
from workers.logs import configure_logging

log = logging.getLogger("loraq.serve")


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``demo`` to the ``loraq`` parser."""
    sub = subparsers.add_parser(
        "serve",
        help="Run the Serve application until Ctrl-C.",
        description="Start (or join, with RAY_ADDRESS) Ray and serve the queue and the model. "
        "Settings come from LORAQ_* variables and .env; with none at all it serves the "
        "bundled demo kit against the local or an embedded Redis.",
    )
    _deployment_options(sub)
    sub.add_argument("--dashboard", action="store_true", help="start Ray's dashboard too")
    sub.set_defaults(func=run_serve, needs_producer=False)

    sub = subparsers.add_parser(
        "demo",
        help="Serve the demo kit, run a job per adapter, print the results, stop.",
        description="Starts everything on the demo kit, submits a job for every demo adapter "
        "and the base model through the producer and one through plain redis-cli, waits, "
        "calls the synchronous HTTP endpoint once, prints a table, shuts down. Exit 0 when "
        "every request gave its adapter's output.",
    )
    _deployment_options(sub)
    sub.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for jobs")
    sub.set_defaults(func=run_demo, needs_producer=False)


def _deployment_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--num-model-replicas", type=int, help="LoRAModel replicas")
    sub.add_argument("--num-consumer-replicas", type=int, help="JobConsumer replicas")
    sub.add_argument("--http-host", help="Serve HTTP host (default 127.0.0.1)")
    sub.add_argument("--http-port", type=int, help="Serve HTTP port (default 8000)")


def run_serve(args: argparse.Namespace) -> int:
    """``loraq serve``: deploy, log where everything is, wait for a signal, shut down."""
    from pydantic import ValidationError

    from workers import launch
    from workers.preflight import SettingError, invalid_settings

    try:
        settings = settings_from(args)
    except ValidationError as error:
        log.error("cannot serve: %s", invalid_settings(error))
        return 2
    configure_logging(settings)
    try:
        running = launch.deploy(settings, dashboard=args.dashboard)
    except (SettingError, launch.StartFailed) as error:
        # One line that says why, instead of Ray's traceback of its own retries.
        log.error("cannot serve: %s", error)
        return 2
    for line in running.notes:
        log.info("%s", line)
    log.info("serving; Ctrl-C or SIGTERM stops")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
        log.info("shutting down: in-flight jobs get %.0fs", settings.graceful_shutdown_timeout_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        launch.shutdown(running)
    log.info("stopped")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``loraq demo``: see :mod:`workers.demo_command`."""
    from workers.demo_command import run

    return run(args)
