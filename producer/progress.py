"""A progress bar on stderr for long CLI verbs; rich when installed, else nothing shown."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``. No bar when stderr is not a terminal (logs, pipes, tests) or
    rich is missing (a producer-only install): the verbs print a summary line anyway."""
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:
        yield lambda n: None
        return
    console = Console(stderr=True)
    with Progress(console=console, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
