"""The queue endpoints' error mapping: a job the replicas did not confirm is a 503 that
says resubmitting is safe, never a 500 or a silent success."""

from __future__ import annotations

import pytest

from producer.durability import ReplicationTimeoutError
from workers.gateway.errors import ApiError, queue_errors


def test_a_replication_timeout_is_a_503_that_says_what_to_do() -> None:
    with pytest.raises(ApiError) as err, queue_errors():
        raise ReplicationTimeoutError(["job-1"], acked=0, wanted=1, timeout_ms=1000)
    assert (err.value.status, err.value.type) == (503, "redis_unavailable")
    assert "job-1" in err.value.message and "again is safe" in err.value.message
