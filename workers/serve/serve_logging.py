"""Serve's own replica logs, set like loraq's (:mod:`workers.logs`): same level and format."""

from __future__ import annotations

from ray.serve.schema import EncodingType, LoggingConfig

from workers.settings import WorkerSettings


def serve_logging_config(settings: WorkerSettings) -> LoggingConfig:
    """The ``logging_config`` of every loraq deployment.

    Serve writes an access line per request, which is a line per job on the model
    replicas: like loraq's own lines about single jobs, only at DEBUG.
    """
    return LoggingConfig(
        log_level=settings.log_level,
        encoding=EncodingType.JSON if settings.log_format == "json" else EncodingType.TEXT,
        enable_access_log=settings.log_level == "DEBUG",
    )
