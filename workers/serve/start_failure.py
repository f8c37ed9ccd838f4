"""Why a deployment of the application failed to start, in one line.

Serve retries a replica whose constructor raises a bounded number of times
(``min(3 * replicas, 20)``), then marks the deployment ``DEPLOY_FAILED`` and ``serve.run``
raises "Failed to update the deployments [...]"; the replica's exception is only in the
deployment's status message, inside a traceback several dozen lines long.
"""

from __future__ import annotations

import re

from ray import serve

from schemas.model_starts import StartFailures

# Serve's DeploymentStatus values (a str enum that ray.serve.schema does not export).
FAILED_STATUSES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
# An exception's own line: "OSError: …", "ray.exceptions.RayTaskError(OSError): …".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b(\([\w.]*\))?: ")
# Ray's wrapper line repeats the actor's name before the real exception's lines.
_RAY_WRAPPER = re.compile(r"^ray\.exceptions\.\w+(\([\w.]*\))?: ray::")


class StartFailed(RuntimeError):
    """The application's replicas could not start; ``str()`` is the cause in one line."""


def cause_line(message: str) -> str:
    """The last exception line of a deployment's status message (its first line if none)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    found = [line for line in lines if _EXCEPTION_LINE.match(line) and not _RAY_WRAPPER.match(line)]
    if found:
        return found[-1]
    return lines[0] if lines else "no message"


def start_failure(app_name: str) -> str | None:
    """``DEPLOYMENT: cause`` of the first deployment of ``app_name`` that failed to start,
    or ``None`` when none did (the error came from elsewhere)."""
    application = serve.status().applications.get(app_name)
    if application is None:
        return None
    for name, deployment in application.deployments.items():
        if deployment.status in FAILED_STATUSES:
            return f"{name} failed to start: {cause_line(deployment.message)}"
    return None


def gave_up(record: StartFailures | None, max_failures: int) -> str | None:
    """Why the application must stop, in one line, once the model replicas failed to
    start ``max_failures`` times in a row; ``None`` while they may still start.

    Serve's own bound on failed starts holds only until a replica of the deployment has
    started: after that (a replica that died, one more replica) it retries for ever.
    """
    if record is None or record.failures < max_failures:
        return None
    return (
        f"LoRAModel failed to start {record.failures} times in a row "
        f"(LORAQ_MAX_START_FAILURES={max_failures}), last on {record.replica}: {record.cause}"
    )
