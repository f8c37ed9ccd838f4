"""A progress bar on stderr for long CLI verbs: rich's when installed, else a plain counter."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``. Drawn only when stderr is a terminal: logs, pipes and tests
    get nothing, and stdout stays for what scripts read (the verbs print a summary line
    anyway). A producer-only install has no rich: it gets a one-line counter instead."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:
        with _counter(label, total) as advance:
            yield advance
        return
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def _counter(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """``label done/total``, rewritten in place (carriage return) at each advance."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        sys.stderr.write(f"\r{label} {done}/{total}")
        sys.stderr.flush()

    advance(0)
    try:
        yield advance
    finally:
        sys.stderr.write("\n")
