"""Batch files, line by line: input lines onto queue jobs, job records onto output lines.

Pure: no Redis, no HTTP. A bad line (not JSON, another endpoint, a body the endpoint
refuses) becomes a :class:`LineError` for the error file; it never fails the batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from pydantic import BaseModel, ValidationError

from schemas import Job, JobRecord, JobStatus
from schemas.batches import (
    BatchEndpoint,
    BatchOutputLine,
    BatchRequestLine,
    LineError,
    LineResponse,
)
from schemas.validation import InvalidJob, check_unique_keys
from workers.gateway.errors import ApiError, validation_message
from workers.gateway.jsonl_bounds import numbered_lines
from workers.gateway.openai_mapping import (
    DEFAULT_COMPLETION_TOKENS,
    adapter_for,
    chat_completion,
    chat_messages,
    completion,
    sampling_params,
)
from workers.gateway.openai_models import ChatCompletionRequest, CompletionRequest


@dataclass(frozen=True)
class LineRules:
    """What every line of one batch is checked against and queued with."""

    endpoint: BatchEndpoint
    base_model: str
    max_new_tokens: int
    priority: int
    deadline: float
    result_ttl_s: int
    tenant: str | None = None  # the batch owner's: its lines share the workers as its jobs


class StoredLine(BaseModel):
    """What a batch keeps of each input line: its job's id, or the error it failed with."""

    line: int
    custom_id: str | None = None
    model: str | None = None
    job_id: str | None = None
    error: LineError | None = None


@dataclass(frozen=True)
class ParsedLine:
    """One input line: its job, or why it has none (``error``)."""

    line: int  # 1-based, as an editor shows it
    custom_id: str | None
    model: str | None = None
    job: Job | None = None
    error: LineError | None = None

    def stored(self) -> StoredLine:
        """What the batch keeps of this line."""
        return StoredLine(
            line=self.line,
            custom_id=self.custom_id,
            model=self.model,
            job_id=self.job.id if self.job else None,
            error=self.error,
        )


def job_id(batch_id: str, line: int) -> str:
    """The queue job of ``line`` of the batch: one per line, so queueing is idempotent."""
    return f"batchjob.{batch_id.removeprefix('batch_')}.{line}"


class LineParser:
    """The lines of one batch, parsed one at a time as a reader reaches them (a repeated
    ``custom_id`` is an error of the later line: ids key the output)."""

    def __init__(self, batch_id: str, rules: LineRules) -> None:
        self.batch_id = batch_id
        self.rules = rules
        self._seen: dict[str, int] = {}

    def parse(self, number: int, raw: bytes) -> ParsedLine:
        """Line ``number`` (``raw``, not blank) as a job or an error."""
        line = _parse_line(number, raw, self.batch_id, self.rules)
        if line.custom_id is not None and line.error is None:
            first = self._seen.setdefault(line.custom_id, number)
            if first != number:
                message = f"custom_id repeats line {first}"
                return _failed(number, line.custom_id, "validation", message)
        return line


def parse_lines(content: bytes, batch_id: str, rules: LineRules) -> list[ParsedLine]:
    """Every non-blank line of ``content`` as a job or an error."""
    parser = LineParser(batch_id, rules)
    return [parser.parse(number, raw) for number, raw in numbered_lines(content)]


def _failed(number: int, custom_id: str | None, code: str, message: str) -> ParsedLine:
    error = LineError(code=code, message=f"line {number}: {message}", line=number)
    return ParsedLine(line=number, custom_id=custom_id, error=error)


def _parse_line(number: int, raw: bytes, batch_id: str, rules: LineRules) -> ParsedLine:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _failed(number, None, "validation", f"not JSON: {exc}")
    if not isinstance(data, dict):
        # Else pydantic's message would name the model and an empty location ("body").
        return _failed(number, None, "validation", "not a JSON object")
    custom_id = data.get("custom_id")
    custom_id = custom_id if isinstance(custom_id, str) else None
    try:
        # As every JSON loraq reads: which of two values would run depends on the parser.
        check_unique_keys(raw)
    except InvalidJob as exc:
        return _failed(number, None, "validation", str(exc))
    try:
        request = BatchRequestLine.model_validate(data)
    except ValidationError as exc:
        return _failed(number, custom_id, "validation", validation_message(exc.errors()))
    if request.url != rules.endpoint:
        message = f"url {request.url} is not the batch's endpoint {rules.endpoint}"
        return _failed(number, custom_id, "validation", message)
    try:
        job = _job(request, job_id(batch_id, number), rules)
    except ValidationError as exc:
        return _failed(number, custom_id, "validation", "body." + validation_message(exc.errors()))
    except ApiError as exc:
        return _failed(number, custom_id, exc.type, exc.message)
    model = str(request.body.get("model"))
    return ParsedLine(line=number, custom_id=custom_id, model=model, job=job)


def _job(request: BatchRequestLine, job_id: str, rules: LineRules) -> Job:
    """The queue job of one line; ``ValidationError`` or ``ApiError`` for a bad body."""
    body: CompletionRequest | ChatCompletionRequest
    fields: dict[str, object] = {}
    if request.url == "/v1/completions":
        body = CompletionRequest.model_validate(request.body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "validation", "a batch line takes one prompt")
        fields["prompt"] = prompts[0]
        max_tokens, default = body.max_tokens, DEFAULT_COMPLETION_TOKENS
    else:
        body = ChatCompletionRequest.model_validate(request.body)
        fields["messages"] = chat_messages(body)
        max_tokens, default = body.max_completion_tokens or body.max_tokens, rules.max_new_tokens
    if body.stream:
        raise ApiError(400, "validation", "stream: true is not possible in a batch")
    if body.n != 1:
        raise ApiError(400, "validation", "a batch line takes n: 1 (one job per line)")
    params = sampling_params(
        body, max_tokens=max_tokens, default_max_tokens=min(default, rules.max_new_tokens)
    )
    return Job(
        id=job_id,
        adapter=adapter_for(body.model, rules.base_model),
        params=params,
        priority=rules.priority,
        tenant=rules.tenant,
        deadline=rules.deadline,
        result_ttl=rules.result_ttl_s,
        **fields,  # type: ignore[arg-type]
    )


def output_line(
    line: StoredLine, record: JobRecord | None, endpoint: BatchEndpoint
) -> BatchOutputLine | None:
    """The output or error line of a queued line whose job ended (``None``: cancelled
    before it ran, or not ended: in neither file)."""
    ident = f"batch_req_{uuid.uuid4().hex}"
    if record is None or not record.status.is_final:
        return None
    if record.status is JobStatus.SUCCEEDED and record.result is not None:
        body: BaseModel
        model = line.model or ""
        if endpoint == "/v1/completions":
            body = completion(model, [record.result])
        else:
            body = chat_completion(model, [record.result])
        response = LineResponse(
            status_code=200, request_id=record.id, body=body.model_dump(mode="json")
        )
        return BatchOutputLine(id=ident, custom_id=line.custom_id, response=response)
    if record.status is JobStatus.CANCELLED:
        return None
    code = record.error.type.value if record.error else record.status.value
    message = record.error.message if record.error else f"the job ended {record.status.value}"
    error = LineError(code=code, message=message, line=line.line)
    return BatchOutputLine(id=ident, custom_id=line.custom_id, error=error)


@dataclass(frozen=True)
class SortedLines:
    """A batch's output and error lines once none of its jobs is left."""

    outputs: list[BatchOutputLine]
    errors: list[BatchOutputLine]
    expired: bool  # some job ended ``expired``: the batch may have run out of time


def sort_lines(
    lines: Sequence[StoredLine], records: Sequence[JobRecord | None], endpoint: BatchEndpoint
) -> SortedLines:
    """Every line of a batch into the output or error file (cancelled ones into neither);
    ``records`` are the jobs of the queued lines, in order."""
    queued = [line for line in lines if line.job_id]
    outputs: list[BatchOutputLine] = []
    errors = [error_line(line) for line in lines if not line.job_id]
    expired = False
    for line, record in zip(queued, records, strict=True):
        expired |= record is not None and record.status is JobStatus.EXPIRED
        out = output_line(line, record, endpoint)
        if out is not None:
            (errors if out.error else outputs).append(out)
    return SortedLines(outputs, errors, expired)


def error_line(line: StoredLine) -> BatchOutputLine:
    """The error-file line of an input line that was never queued."""
    return BatchOutputLine(
        id=f"batch_req_{uuid.uuid4().hex}", custom_id=line.custom_id, error=line.error
    )


def jsonl(lines: list[BatchOutputLine]) -> bytes:
    """``lines`` as a JSONL file (empty: no file)."""
    return b"".join(orjson.dumps(line.model_dump(mode="json")) + b"\n" for line in lines)
