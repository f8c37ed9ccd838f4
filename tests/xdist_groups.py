"""``--dist loadgroup`` that works on pytest 9: each ``xdist_group`` runs whole in one worker.

pytest-xdist 3.8 tells its controller a test's group by appending ``@group`` to the test's
node id in the worker; pytest 9 keeps node ids in a structure that ignores the change, so
every test became a group of its own and the Ray tests spread over both workers. Here the
workers write each test's group to a file the controller names, and the controller's
scheduler (xdist's own loadgroup scheduler) reads the groups from there.

The conftest imports these hooks; they are optional, so a run without xdist works.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

# The workerinput key that carries the file's folder to the workers.
FOLDER_KEY = "loraq_xdist_groups"
_folder = pytest.StashKey[Path]()


def groups_of(items: list[pytest.Item]) -> dict[str, str]:
    """Node id -> xdist group, for the tests that have one."""
    groups = {}
    for item in items:
        names = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group")})
        if names:
            groups[item.nodeid] = "_".join(names)
    return groups


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(Controller) Name the folder each worker writes its groups to."""
    config = node.config
    if _folder not in config.stash:
        config.stash[_folder] = Path(tempfile.mkdtemp(prefix="loraq-xdist-groups-"))
    node.workerinput[FOLDER_KEY] = str(config.stash[_folder])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """(Worker) Write the groups of the collected tests, before the worker tells the
    controller its collection (xdist's hook of the same name)."""
    workerinput = getattr(session.config, "workerinput", None)
    if not workerinput or FOLDER_KEY not in workerinput:
        return
    path = Path(workerinput[FOLDER_KEY]) / f"{workerinput['workerid']}.json"
    path.write_text(json.dumps(groups_of(session.items)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """(Controller) For ``--dist loadgroup``: xdist's scheduler, told the groups."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FileGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
        """Scheduling starts once every worker has collected, so the files are written."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                self._groups = {}
                folder = config.stash.get(_folder, None)
                for path in sorted(folder.glob("*.json")) if folder else []:
                    self._groups.update(json.loads(path.read_text()))
            return self._groups.get(nodeid, nodeid)

    return FileGroupScheduling(config, log)
