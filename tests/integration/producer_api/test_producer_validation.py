"""Bad input is refused by the producer, naming the field and the bound, and writes nothing."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest

from producer import JobValidationError, Producer
from schemas import GenerationParams, Job

BAD_JOBS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "no prompt": ({}, ["prompt", "messages"]),
    "prompt and messages": (
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        ["prompt", "messages"],
    ),
    "id characters": ({"prompt": "a", "id": "a b/c"}, ["id", "A-Za-z0-9._:-"]),
    "id length": ({"prompt": "a", "id": "x" * 129}, ["id", "128"]),
    "max_new_tokens": (
        {"prompt": "a", "params": {"max_new_tokens": 0}},
        ["params.max_new_tokens", "1"],
    ),
    "temperature": ({"prompt": "a", "params": {"temperature": 2.5}}, ["params.temperature", "2"]),
    "top_p": ({"prompt": "a", "params": {"top_p": 0}}, ["params.top_p", "greater than 0"]),
    "unknown param": ({"prompt": "a", "params": {"beam": 4}}, ["params.beam", "Extra"]),
    "metadata value": (
        {"prompt": "a", "metadata": {"when": datetime.datetime(2026, 1, 1)}},
        ["metadata.when", "JSON"],
    ),
    "adapter path": ({"prompt": "a", "adapter": "../etc"}, ["adapter"]),
    "empty messages": ({"messages": []}, ["messages", "at least 1"]),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_submit_refuses_bad_input_and_writes_nothing(
    case: str, producer: Producer, prefix_keys: Callable[[], list[str]]
) -> None:
    fields, words = dict(BAD_JOBS[case][0]), BAD_JOBS[case][1]
    prompt = fields.pop("prompt", None)
    with pytest.raises(JobValidationError) as caught:
        producer.submit(prompt, **fields)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))
    assert isinstance(caught.value, ValueError)
    assert prefix_keys() == []


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_submit_many_refuses_the_whole_batch_naming_the_job(
    case: str, producer: Producer, prefix_keys: Callable[[], list[str]]
) -> None:
    bad, words = BAD_JOBS[case]
    jobs = [{"prompt": "fine"}, {"prompt": "fine too"}, bad]
    with pytest.raises(JobValidationError, match=r"^jobs\[2\]: ") as caught:
        producer.submit_many(jobs)
    assert words[0] in str(caught.value)
    assert prefix_keys() == []


def test_submit_job_validates_a_model_built_without_checks(
    producer: Producer, prefix_keys: Callable[[], list[str]]
) -> None:
    unchecked = Job.model_construct(prompt="a", params=GenerationParams.model_construct(top_k=-1))
    with pytest.raises(JobValidationError, match=r"params\.top_k"):
        producer.submit_job(unchecked)
    assert prefix_keys() == []


def test_params_may_be_a_model(producer: Producer) -> None:
    job_id = producer.submit("a", params=GenerationParams(max_new_tokens=7, seed=3))
    assert producer.get(job_id) is not None


@pytest.mark.parametrize("job_id", ["x:events", "a b", "", "x" * 129])
def test_reading_or_cancelling_a_bad_id_is_refused_before_redis(
    job_id: str, producer: Producer, prefix_keys: Callable[[], list[str]]
) -> None:
    # "x:events" names job x's events stream: Redis would answer a type error.
    producer.submit("a", id="x")
    producer.client.xadd(producer.keys.job_events("x"), {"event": "status"})
    before = prefix_keys()
    for call in (producer.get, producer.cancel, lambda i: producer.wait(i, 0.1)):
        with pytest.raises(JobValidationError, match="id "):
            call(job_id)
    assert prefix_keys() == before
