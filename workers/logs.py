"""Worker logs: quiet at INFO, job id and adapter on every line about a job, secrets masked.

Lines about one job are DEBUG (a busy worker runs thousands a minute) and carry the
fields of :func:`job_extra`; ``LORAQ_LOG_FORMAT=json`` writes one JSON object per line
with ``ts``, ``level``, ``logger``, ``msg`` and those fields.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson

from workers.settings import WorkerSettings

# The loggers of loraq's own code: configured here, not propagated to Ray's root logger.
LOGGERS = ("workers", "producer", "loraq")
MASK = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes set on every record after it is made; the others are the record factory's.
_FORMATTED = {"message", "asctime", "taskName"}


def job_extra(job_id: str | None, adapter: str | None) -> dict[str, str]:
    """The ``extra`` of a log call about a job (the base model's adapter is ``""``)."""
    return {"job_id": job_id or "", "adapter": adapter or ""}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call added through ``extra``.

    What the current record factory puts on every record is not ``extra``: libraries
    install factories of their own (vLLM's adds ``vllm_process_name``, Ray's the private
    ``_ray_timestamp_ns``); private attributes are left out too.
    """
    standard = _standard(logging.getLogRecordFactory())
    return {
        key: value
        for key, value in vars(record).items()
        if key not in standard and not key.startswith("_")
    }


@functools.lru_cache(maxsize=8)
def _standard(factory: Callable[..., logging.LogRecord]) -> frozenset[str]:
    """The attributes ``factory`` gives every record (cached: a factory changes rarely)."""
    return frozenset({*vars(factory("", 0, "", 0, "", None, None)), *_FORMATTED})


def secrets_of(settings: WorkerSettings) -> list[str]:
    """What must never be written to a log: the Redis passwords and the API keys."""
    found = []
    if settings.redis_url:
        found.append(urlsplit(settings.redis_url).password or "")
    if settings.redis_sentinel_password is not None:
        found.append(settings.redis_sentinel_password.get_secret_value())
    if settings.api_keys is not None:
        found.extend(key.strip() for key in settings.api_keys.get_secret_value().split(","))
    return [secret for secret in found if secret]


class Redactor:
    """Replaces each secret in a text by ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first: a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value …`` with the ``extra`` fields at the end."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{key}={value}" for key, value in extra_fields(record).items())
        return self.redact(f"{line} {fields}" if fields else line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (epoch seconds), ``level``, ``logger``, ``msg``, the
    ``extra`` fields, and ``exc`` with the traceback when there is one."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **extra_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # Masked value by value: in the encoded line a secret may be escaped past matching.
        masked = {
            key: self.redact(value) if isinstance(value, str) else value
            for key, value in line.items()
        }
        return orjson.dumps(masked, default=lambda value: self.redact(str(value))).decode()


def log_handler(settings: WorkerSettings) -> logging.Handler:
    """A stderr handler in ``settings.log_format`` that masks the settings' secrets."""
    redact = Redactor(secrets_of(settings))
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(redact))
    else:
        handler.setFormatter(TextFormatter(redact))
    return handler


def configure_logging(settings: WorkerSettings) -> None:
    """Send loraq's loggers to a :func:`log_handler` at ``settings.log_level``.

    Called where worker processes start (``loraq serve``, each Serve replica); calling it
    again replaces the handler it added before instead of adding another.
    """
    handler = log_handler(settings)
    handler.set_name("loraq")
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "loraq"]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(settings.log_level)
        logger.propagate = False
