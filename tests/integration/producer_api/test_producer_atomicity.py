"""A job is the stream entry and the record together, or neither: even when a pipeline of
submissions partly fails on the server."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis

from producer import Producer, SubmitError
from producer.embedded import EmbeddedRedis
from schemas import Keys


def stream_job_ids(r: redis.Redis, keys: Keys) -> list[str]:
    if r.type(keys.jobs) != b"stream":
        return []
    return [orjson.loads(fields[b"job"])["id"] for _, fields in r.xrange(keys.jobs)]


def test_jobs_whose_record_key_is_taken_are_refused_whole(
    producer: Producer, r: redis.Redis, keys: Keys
) -> None:
    ids = [f"job-{i}" for i in range(10)]
    # Another program left plain strings where two records would go: their EVALSHA fails
    # in the middle of the pipeline, between submissions that succeed.
    taken = {"job-3", "job-7"}
    for job_id in taken:
        r.set(keys.job(job_id), "not a job")

    with pytest.raises(SubmitError) as caught:
        producer.submit_many([{"id": i, "prompt": f"p {i}"} for i in ids], chunk_size=4)

    assert set(caught.value.failed) == taken
    assert all("WRONGTYPE" in reason for reason in caught.value.failed.values())
    assert caught.value.submitted == [i for i in ids if i not in taken]
    in_stream = stream_job_ids(r, keys)
    for job_id in ids:
        has_record = r.type(keys.job(job_id)) == b"hash"
        assert has_record == (job_id in in_stream), job_id
        assert has_record == (job_id not in taken), job_id
    assert len(in_stream) == len(ids) - len(taken)
    assert {r.get(keys.job(i)) for i in taken} == {b"not a job"}


def test_a_stream_key_of_another_type_refuses_every_job(
    producer: Producer, r: redis.Redis, keys: Keys
) -> None:
    r.set(keys.jobs, "not a stream")
    ids = [f"job-{i}" for i in range(6)]

    with pytest.raises(SubmitError) as caught:
        producer.submit_many([{"id": i, "prompt": "p"} for i in ids])

    assert caught.value.submitted == []
    assert sorted(caught.value.failed) == ids
    assert [i for i in ids if r.exists(keys.job(i))] == []
    assert r.get(keys.jobs) == b"not a stream"


def test_single_submit_refused_by_the_server_writes_nothing(
    producer: Producer, r: redis.Redis, keys: Keys
) -> None:
    r.set(keys.job("taken"), "x")
    with pytest.raises(SubmitError, match="taken"):
        producer.submit("p", id="taken")
    assert not r.exists(keys.jobs)


def test_a_pipeline_resends_after_the_script_cache_is_lost(tmp_path: Path) -> None:
    """NOSCRIPT (server restart, SCRIPT FLUSH): the chunk is sent again, each job once."""
    # A server of its own: SCRIPT FLUSH is server-wide.
    with EmbeddedRedis(state_dir=tmp_path, appendonly=False) as server:
        r = redis.Redis.from_url(server.url)
        producer = Producer(r, prefix="p")
        producer.submit_many([{"id": "warm", "prompt": "p"}])
        r.script_flush()
        ids = producer.submit_many([{"id": f"j{i}", "prompt": "p"} for i in range(5)])
        assert ids == [f"j{i}" for i in range(5)]
        assert sorted(stream_job_ids(r, producer.keys)) == sorted(["warm", *ids])
        r.close()
