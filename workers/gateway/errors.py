"""One error shape for every HTTP failure: ``{"error": {"type": ..., "message": ...}}``.

Engine errors keep their protocol type (``validation``, ``unknown_adapter`` ...); failures
that only exist over HTTP get types of their own (``unauthorized``, ``redis_unavailable``,
``payload_too_large`` ...). Internal errors are logged, never echoed to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from producer.durability import ReplicationTimeoutError
from producer.errors import JobTooLargeError, LoraqConnectionError
from schemas import ErrorType
from workers.queue.runner import engine_error

log = logging.getLogger(__name__)

# Status of each engine error type; anything else is the server's fault.
ENGINE_STATUS: Mapping[ErrorType, int] = {
    ErrorType.VALIDATION: 400,
    ErrorType.INCOMPATIBLE_ADAPTER: 400,
    ErrorType.UNKNOWN_ADAPTER: 404,
    ErrorType.TIMEOUT: 504,
}
_HTTP_TYPES: Mapping[int, str] = {
    400: "validation",  # FastAPI's "error parsing the body" (e.g. not UTF-8)
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "payload_too_large",
    503: "unavailable",
}
MAX_LISTED_PROBLEMS = 5


class ErrorDetail(BaseModel):
    """What went wrong, in words a client can act on."""

    type: str = Field(
        description="validation, unknown_adapter, not_found, unauthorized, payload_too_large, "
        "redis_unavailable, timeout, conflict, internal, ..."
    )
    message: str


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """A failure answered with ``status`` and the error envelope."""

    def __init__(
        self, status: int, type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers


def error_response(
    status: int, type: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON response with the error envelope."""
    body = ErrorResponse(error=ErrorDetail(type=type, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the error envelope for ``statuses``."""
    return {status: {"model": ErrorResponse} for status in statuses}


def redis_unavailable(exc: LoraqConnectionError) -> ApiError:
    """503 for a queue endpoint whose Redis cannot be reached (the URL's password masked)."""
    return ApiError(503, "redis_unavailable", f"the job queue is unavailable: {exc}")


@contextmanager
def engine_errors() -> Iterator[None]:
    """Turn an :class:`EngineError` (also when Ray wrapped it) into an :class:`ApiError`."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        error = engine_error(exc)
        if error is None:
            raise
        status = ENGINE_STATUS.get(error.type, 500)
        raise ApiError(status, error.type.value, error.message) from exc


@contextmanager
def queue_errors() -> Iterator[None]:
    """Turn a lost Redis connection, or jobs its replicas did not confirm in time
    (``LORAQ_REDIS_MIN_REPLICAS``), into a quick 503; a job over the protocol's size
    into a 413."""
    try:
        yield
    except LoraqConnectionError as exc:
        raise redis_unavailable(exc) from exc
    except JobTooLargeError as exc:
        # Only when LORAQ_MAX_BODY_BYTES is raised past the protocol's bound on a job.
        raise ApiError(413, "payload_too_large", str(exc)) from exc
    except ReplicationTimeoutError as exc:
        message = f"the job queue did not confirm the job: {exc}; sending it again is safe"
        raise ApiError(503, "redis_unavailable", message) from exc


def validation_message(problems: Sequence[Any]) -> str:
    """``where: problem; ...`` for FastAPI's validation errors (the first few), ``where``
    in the client's terms: ``adapter``, ``params.max_new_tokens``, ``[2].prompt``."""
    located = [(client_location(problem), problem) for problem in problems]
    # A body that may be one job or a list is checked against both: the shape it does not
    # have fails as a whole ("should be a valid list"), which says nothing useful.
    other_shape = [
        (where, problem)
        for where, problem in located
        if not where and str(problem.get("type", "")).endswith("_type")
    ]
    if len(other_shape) < len(located):
        located = [item for item in located if item not in other_shape]
    parts = []
    for where, problem in located[:MAX_LISTED_PROBLEMS]:
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where or 'body'}: {message}")
    if len(located) > MAX_LISTED_PROBLEMS:
        parts.append(f"and {len(located) - MAX_LISTED_PROBLEMS} more")
    return "; ".join(parts)


# Where a value came from (FastAPI's first location part): not the client's field name.
_SOURCES = frozenset({"body", "query", "path", "header"})


def client_location(problem: Mapping[str, Any]) -> str:
    """The field of one validation problem as a client names it: without the source
    (``body``) and without pydantic's validator and union tags (``function-after[…]``,
    ``list[…]``, model names), list positions as ``[i]``."""
    if problem.get("type") == "json_invalid":
        return ""  # the location is a character position, not a field
    parts: list[str] = []
    for index, part in enumerate(problem.get("loc", ())):
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif (index == 0 and part in _SOURCES) or not _is_field_name(str(part)):
            continue
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts)


def _is_field_name(part: str) -> bool:
    # Field names of the wire are snake_case; tags hold brackets, model names capitals.
    return part.isidentifier() and part == part.lower()


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.type, exc.message, exc.headers)


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, ErrorType.VALIDATION.value, validation_message(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_TYPES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, kind, str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, ErrorType.INTERNAL.value, "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure of ``app`` with the error envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
