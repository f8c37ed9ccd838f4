"""The OpenAI Batch API over the queue: files, batches and the lines of their files.

The shapes are OpenAI's (``openai.types.Batch``, ``FileObject``, the batch input and
output lines), so their official clients read them unchanged. Stored in Redis under the
prefix (``{P}:file:{id}``, ``{P}:batch:{id}``, ``{P}:batches``; see docs/PROTOCOL.md).
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

BATCH_ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
BatchEndpoint = Literal["/v1/completions", "/v1/chat/completions"]
# OpenAI accepts only this window; a batch not done within it ends ``expired``.
COMPLETION_WINDOW: Literal["24h"] = "24h"
COMPLETION_WINDOW_S = 24 * 3600
MAX_CUSTOM_ID_CHARS = 512
MAX_BATCH_METADATA_KEYS = 16


class BatchStatus(str, Enum):
    """``validating -> in_progress -> finalizing -> completed``; ``failed`` when the batch
    could not be queued; ``cancelling -> cancelled``; ``expired`` past the window."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """Whether the batch has ended (its output and error files are written)."""
        return self in FINAL_BATCH_STATUSES


FINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED}
)


class FileObject(BaseModel):
    """An uploaded (or output) file: ``GET /v1/files/{id}``."""

    id: str
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0)
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"] = "processed"


class FileDeleted(BaseModel):
    """Reply of ``DELETE /v1/files/{id}``."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchRequestLine(BaseModel):
    """One line of a batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=MAX_CUSTOM_ID_CHARS)
    method: Literal["POST"]
    url: BatchEndpoint
    body: dict[str, JsonValue]


class BatchCreate(BaseModel):
    """Body of ``POST /v1/batches``."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: BatchEndpoint
    completion_window: Literal["24h"] = COMPLETION_WINDOW
    metadata: dict[str, str] | None = Field(None, max_length=MAX_BATCH_METADATA_KEYS)


class RequestCounts(BaseModel):
    """How many lines there are, and how many succeeded and failed so far."""

    total: int = Field(0, ge=0)
    completed: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)


class BatchErrorData(BaseModel):
    """A problem with the batch as a whole."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    """Problems with the batch as a whole (not its lines: those go to the error file)."""

    object: Literal["list"] = "list"
    data: list[BatchErrorData] = Field(default_factory=list)


class Batch(BaseModel):
    """A batch: ``GET /v1/batches/{id}``."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: BatchEndpoint
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    """Reply of ``GET /v1/batches``: newest first, ``after`` the last id to page on."""

    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class LineResponse(BaseModel):
    """The HTTP answer a line would have had."""

    status_code: int
    request_id: str
    body: dict[str, JsonValue]


class LineError(BaseModel):
    """Why a line failed: ``code`` is a loraq error type (``validation``,
    ``unknown_adapter``, ``timeout``, ``cancelled``, ...), ``message`` says what to fix."""

    code: str
    message: str
    line: int | None = Field(None, description="1-based line of the input file.")


class BatchOutputLine(BaseModel):
    """One line of an output file (``error`` null) or an error file (``error`` set)."""

    id: str
    custom_id: str | None
    response: LineResponse | None = None
    error: LineError | None = None
