"""Applications that one folder's tests share: deployed for the folder's first test that
asks, removed when the run leaves the folder.

A session fixture in a folder's conftest lives to the session's end: the folder's apps
then idle (their consumers poll Redis, their replicas report metrics) through every
later folder of the Ray worker, on the same two cores. A module fixture that returns
``folder_shared(request, ...)`` deploys once for the folder instead, and
tests/integration/conftest.py's ``pytest_runtest_teardown`` calls ``leave_folders``.

A module of its own, imported by name: pytest imports each conftest.py as a module
named ``conftest``, and ``from tests.integration.conftest import ...`` would give a
second copy, with a registry of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

# (folder, fixture name) -> the shared object, and what closes it.
_SHARED: dict[tuple[Path, str], tuple[Any, ExitStack]] = {}


def folder_shared(
    request: pytest.FixtureRequest, open_it: Callable[[], AbstractContextManager[T]]
) -> T:
    """What ``open_it()`` yields, entered once for the tests of the requesting test's
    folder and exited once the run leaves that folder; a test of the folder that runs
    again later (in another order) gets a fresh one."""
    key = (request.path.parent, request.fixturename)
    if key not in _SHARED:
        with ExitStack() as stack:
            value = stack.enter_context(open_it())
            _SHARED[key] = (value, stack.pop_all())
    return _SHARED[key][0]  # type: ignore[no-any-return]


def leave_folders(folder: Path | None) -> None:
    """Close what every folder but ``folder`` shared (``None``: all), the latest first,
    each even if one before raised."""
    with ExitStack() as closing:
        for key in [key for key in _SHARED if key[0] != folder]:
            closing.push(_SHARED.pop(key)[1])
