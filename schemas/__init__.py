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

__all__ = [
    "DEFAULT_PREFIX",
    "FINAL_STATUSES",
    "PROTOCOL_VERSION",
    "ErrorType",
    "GenerationParams",
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
]
