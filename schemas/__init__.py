"""Wire protocol v1 of loraq: jobs, records, events and the Redis key layout.

Pure pydantic models; nothing here imports Redis, Ray or torch.
"""

from schemas.jobs import GenerationParams, Job, Message
from schemas.keys import DEFAULT_PREFIX, PROTOCOL_VERSION, Keys
from schemas.records import (
    FINAL_STATUSES,
    ErrorType,
    JobError,
    JobEvent,
    JobRecord,
    JobResult,
    JobStatus,
    Timings,
    can_transition,
)
from schemas.validation import InvalidJob, describe, parse_job, validate_job

__all__ = [
    "DEFAULT_PREFIX",
    "FINAL_STATUSES",
    "PROTOCOL_VERSION",
    "ErrorType",
    "GenerationParams",
    "InvalidJob",
    "Job",
    "JobError",
    "JobEvent",
    "JobRecord",
    "JobResult",
    "JobStatus",
    "Keys",
    "Message",
    "Timings",
    "can_transition",
    "describe",
    "parse_job",
    "validate_job",
]
