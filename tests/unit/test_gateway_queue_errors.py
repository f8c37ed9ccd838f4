"""The queue endpoints' error mapping: a job the replicas did not confirm is a 503 that
says resubmitting is safe, never a 500 or a silent success; a job over the protocol's
size is a 413."""

from __future__ import annotations

import pytest

from producer.durability import ReplicationTimeoutError
from producer.errors import JobTooLargeError
from workers.gateway.errors import ApiError, queue_errors


def test_a_replication_timeout_is_a_503_that_says_what_to_do() -> None:
    with pytest.raises(ApiError) as err, queue_errors():
        raise ReplicationTimeoutError(["job-1"], acked=0, wanted=1, timeout_ms=1000)
    assert (err.value.status, err.value.type) == (503, "redis_unavailable")
    assert "job-1" in err.value.message and "again is safe" in err.value.message


def test_a_job_over_the_protocols_size_is_a_413_naming_the_bound() -> None:
    # Reached only with LORAQ_MAX_BODY_BYTES raised past MAX_JOB_BYTES.
    with pytest.raises(ApiError) as err, queue_errors():
        raise JobTooLargeError("j: job: 5000000 bytes as JSON, over the protocol's 4194304")
    assert (err.value.status, err.value.type) == (413, "payload_too_large")
    assert "4194304" in err.value.message
