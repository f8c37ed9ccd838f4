"""Worker log lines: JSON or text, job fields from ``extra``, level, secrets masked."""

from __future__ import annotations

import logging

import orjson
import pytest
from pydantic import SecretStr

from workers.logs import LOGGERS, configure_logging, job_extra
from workers.settings import WorkerSettings

PASSWORD = "hunter2-redis-pw"
KEYS = ("sk-first-key-123", "sk-second-key-456")


def settings(**overrides: object) -> WorkerSettings:
    values: dict[str, object] = {
        "redis_url": f"redis://loraq:{PASSWORD}@redis.internal:6379/0",
        "api_keys": SecretStr(",".join(KEYS)),
        **overrides,
    }
    return WorkerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _restore_loggers() -> object:
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level)
        for name in LOGGERS
    }
    yield None
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)


def test_json_lines_carry_ts_level_logger_msg_and_the_job_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(settings(log_format="json", log_level="DEBUG"))
    log = logging.getLogger("workers.queue.runner")
    log.debug("job %s ended %s", "j-1", "succeeded", extra=job_extra("j-1", "upper"))
    log.info("consumer %s reading", "c-0")

    first, second = (orjson.loads(line) for line in capsys.readouterr().err.splitlines())
    assert set(first) == {"ts", "level", "logger", "msg", "job_id", "adapter"}
    assert (first["level"], first["logger"]) == ("DEBUG", "workers.queue.runner")
    assert first["msg"] == "job j-1 ended succeeded"
    assert (first["job_id"], first["adapter"]) == ("j-1", "upper")
    assert isinstance(first["ts"], float)
    assert set(second) == {"ts", "level", "logger", "msg"}


def test_text_lines_end_with_the_job_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings(log_level="DEBUG"))
    logging.getLogger("workers.x").debug("job j-2 failed", extra=job_extra("j-2", None))
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("DEBUG workers.x: job j-2 failed job_id=j-2 adapter=")


def test_info_is_quiet_about_single_jobs_and_configuring_twice_adds_no_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(settings())
    configure_logging(settings())
    log = logging.getLogger("workers.queue.runner")
    log.debug("job j-3 ended succeeded", extra=job_extra("j-3", "sql"))
    log.warning("job j-3 attempt 1 failed, retrying", extra=job_extra("j-3", "sql"))
    [line] = capsys.readouterr().err.splitlines()
    assert "WARNING" in line and "job_id=j-3 adapter=sql" in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_never_reach_the_log(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = settings(log_format=log_format)
    configure_logging(config)
    log = logging.getLogger("workers.serve")
    # The mistakes that leak: the URL, the raw keys, the settings as a whole, in the
    # message, in extra fields and in a traceback.
    log.warning("connecting to %s", config.redis_url, extra={"url": config.redis_url})
    assert config.api_keys is not None
    log.warning("keys: %s", config.api_keys.get_secret_value())
    log.warning("settings: %r", config.model_dump())
    try:
        raise ValueError(f"bad key {KEYS[1]}")
    except ValueError:
        log.exception("refused")

    out = capsys.readouterr().err
    assert out.count("***") >= 5
    for secret in (PASSWORD, *KEYS):
        assert secret not in out
    assert "redis.internal:6379" in out  # the rest of the URL stays readable
