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

from workers.logs import configure_logging

log = logging.getLogger("loraq.serve")
# How often loraq serve looks at the model replicas' failed starts.
WATCH_S = 1.0


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
    """``loraq serve``: deploy, log where everything is, wait for a signal (or for the
    model replicas to fail ``LORAQ_MAX_START_FAILURES`` starts in a row), shut down."""
    from workers import launch
    from workers.deploy_command import CANNOT_START, deploy_or_say_why, settings_or_say_why

    settings = settings_or_say_why(args, log.error)
    if settings is None:
        return CANNOT_START
    configure_logging(settings)
    running = deploy_or_say_why(settings, log.error, dashboard=args.dashboard)
    if running is None:
        return CANNOT_START
    for line in running.notes:
        log.info("%s", line)
    log.info("serving; Ctrl-C or SIGTERM stops")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    cause = None
    try:
        while cause is None and not stop.wait(WATCH_S):
            cause = launch.stopped_because(running)
        if cause is None:
            log.info(
                "shutting down: in-flight jobs get %.0fs", settings.graceful_shutdown_timeout_s
            )
        else:
            # One line, then the jobs the consumers hold go back to 'queued'.
            log.error("stopping: %s", cause)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        launch.shutdown(running)
    log.info("stopped")
    return 0 if cause is None else CANNOT_START


def run_demo(args: argparse.Namespace) -> int:
    """``loraq demo``: see :mod:`workers.demo_command`."""
    from workers.demo_command import run

    return run(args)
