"""The client side of loraq: submit generation jobs to the queue and read their results.

Needs only redis, orjson and pydantic: ``pip install loraq`` without the worker extra.
"""

from producer.client import AsyncProducer, Producer
from producer.errors import (
    JobTimeoutError,
    JobTooLargeError,
    JobValidationError,
    LoraqConnectionError,
    RateLimitedError,
    SubmitError,
)
from producer.settings import ClientSettings
from producer.stats import QueueStats

__all__ = [
    "AsyncProducer",
    "ClientSettings",
    "JobTimeoutError",
    "JobTooLargeError",
    "JobValidationError",
    "LoraqConnectionError",
    "Producer",
    "QueueStats",
    "RateLimitedError",
    "SubmitError",
]
