"""Scenario 6: over a thousand hostile payloads pushed raw, with good jobs among them.

Hypothesis generates the stream entries: not JSON, wrong types, huge strings, deep
nesting, control characters, path-like and unknown adapter names, ids that collide with
other jobs or land on other keys, absurd params. Each must be answered — a ``failed``
record naming the problem, or a dead letter under its entry ID when its id cannot be
used — and the good jobs mixed among them must all succeed, with no replica restarted.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import JobRecord, codec
from tests.integration.chaos.accounting import FIGURES, Tally, account
from tests.integration.chaos.conftest import ChaosApp
from workers.queue import policy

PAYLOADS = 1000
GOOD_EVERY = 10
ANSWER_TIMEOUT_S = 300.0

text = st.text(max_size=40)
control = st.text(alphabet=st.characters(max_codepoint=0x1F), min_size=1, max_size=12)
huge = st.integers(20_000, 300_000).map(lambda n: "é" * n)
deep = st.integers(200, 3_000).map(lambda d: '{"a":' * d + "1" + "}" * d)
path_like = st.sampled_from(
    ["../x", "/etc/passwd", "a/b", "..", ".", "~root", "C:\\x", "upper/../rot13", "%2e%2e%2fx"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(), text, st.none())
params = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": numbers,
        "temperature": numbers,
        "top_p": numbers,
        "top_k": numbers,
        "seed": numbers,
        "stop": st.one_of(text, st.lists(st.one_of(text, st.integers()), max_size=40)),
        "bogus": json_values,
    },
)


def hostile_entries(taken: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Stream entries (field -> value) a careless or malicious client could XADD."""
    ids = st.one_of(
        st.sampled_from(["", "*", "a b", "{x}", "x\ny", "a" * 129, "🙂", "$", "-"]),
        path_like,
        control,
        st.integers(),
        st.sampled_from(taken),
        st.sampled_from([f"{job_id}:events" for job_id in taken]),
        st.from_regex(r"\A[a-z]{1,3}\Z"),  # ids that hostile entries share with each other
    )
    job = st.fixed_dictionaries(
        {},
        optional={
            "id": ids,
            "prompt": st.one_of(text, control, huge, json_values),
            "messages": st.one_of(json_values, st.lists(json_values, max_size=3)),
            "adapter": st.one_of(path_like, control, text, st.integers(), json_values),
            "params": st.one_of(params, json_values),
            "deadline": numbers,
            "result_ttl": numbers,
            "metadata": st.one_of(json_values, huge.map(lambda s: {"k": s})),
        },
    )
    not_json = st.one_of(
        text,
        control,
        deep,
        st.binary(max_size=64),
        st.sampled_from(["{", "null", "[]", "1", '"s"', "{'a': 1}", "NaN", "{}"]),
    )
    return st.one_of(
        job.map(lambda j: {"job": json.dumps(j)}),  # json.dumps writes NaN/Infinity: not JSON
        not_json.map(lambda s: {"job": s}),
        json_values.map(lambda v: {"job": json.dumps(v)}),
        st.dictionaries(text.filter(lambda k: k != "job"), text, min_size=1, max_size=3),
        job.map(lambda j: {"job": json.dumps(j), "extra": "field"}),
    )


def refused(dead: dict[str, str]) -> bool:
    """A dead letter for an entry whose id could not take a record."""
    message = str(orjson.loads(dead["error"]).get("message", ""))
    return "already used by stream entry" in message or "clashes with another key" in message


def answer_problem(
    entry_id: str,
    fields: dict[str, str],
    records: dict[str, dict[bytes, bytes]],
    dead: dict[str, dict[str, str]],
) -> str | None:
    """Why this hostile entry has no proper answer yet (``None``: it has one)."""
    if entry_id in dead and refused(dead[entry_id]):
        return None
    expected = policy.parse_entry(entry_id, fields)
    job_id = expected.job_id if isinstance(expected, policy.Rejected) else str(expected.id)
    raw = records.get(job_id)
    if not raw or codec.as_text(raw.get(b"entry", b"")) != entry_id:
        return f"{entry_id}: no record of its own under {job_id!r}"
    record = JobRecord.from_hash(job_id, raw)
    if isinstance(expected, policy.Rejected):
        if record.status.value != "failed" or record.error is None:
            return f"{entry_id}: {record.status.value} instead of failed"
        if record.error.message != expected.message:
            return f"{entry_id}: error {record.error.message!r}, not {expected.message!r}"
        if entry_id not in dead:
            return f"{entry_id}: failed but not in the dead letters"
    elif record.status.value in ("queued", "running"):
        return f"{entry_id}: still {record.status.value}"
    return None


def read_answers(
    app: ChaosApp, pushed: list[tuple[str, dict[str, str]]]
) -> tuple[dict[str, dict[bytes, bytes]], dict[str, dict[str, str]]]:
    """Records of every id the entries could be answered under, dead letters by entry."""
    with app.client() as client:
        job_ids = set()
        for entry_id, fields in pushed:
            parsed = policy.parse_entry(entry_id, fields)
            job_ids.add(parsed.job_id if isinstance(parsed, policy.Rejected) else str(parsed.id))
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(app.keys.job(job_id))
        # An id such as "x:events" names another job's events stream: no record there.
        replies = pipe.execute(raise_on_error=False)
        records = {
            job_id: reply
            for job_id, reply in zip(job_ids, replies, strict=True)
            if not isinstance(reply, Exception)
        }
        dead = {}
        for _, raw in client.xrange(app.keys.dead):
            letter = codec.decode_fields(raw)
            dead[letter["entry"]] = letter
    return records, dead


def test_a_thousand_hostile_payloads_are_answered_and_good_jobs_succeed(
    chaos_app: ChaosApp,
) -> None:
    app = chaos_app
    app.wait_healthy()
    pids = {*app.model_pids().values(), *app.consumer_pids().values()}
    errors_before = app.consumer_errors()
    started = time.monotonic()
    good = app.submit(50, seed=6)
    taken = list(good)
    pushed: list[tuple[str, dict[str, str]]] = []

    with app.client() as client:

        @settings(
            max_examples=PAYLOADS,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(entry=hostile_entries(taken))
        def push(entry: dict[str, Any]) -> None:
            entry_id = codec.as_text(client.xadd(app.keys.jobs, entry))
            pushed.append((entry_id, codec.decode_fields(entry)))
            if len(pushed) % GOOD_EVERY == 0:
                good.update(app.submit(1, seed=len(pushed)))

        push()

    assert len(pushed) >= PAYLOADS
    app.wait_finished(list(good), len(good), timeout_s=ANSWER_TIMEOUT_S)
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        records, dead = read_answers(app, pushed)
        answers = (answer_problem(entry_id, fields, records, dead) for entry_id, fields in pushed)
        problems = [problem for problem in answers if problem]
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    answered_s = time.monotonic() - started

    with app.client() as client:
        tally = account(client, app.keys, good, "6 hostile payloads")
    hostile = Tally("hostile")
    for entry_id, fields in pushed:
        parsed = policy.parse_entry(entry_id, fields)
        if entry_id in dead and refused(dead[entry_id]):
            hostile.statuses["refused_id"] += 1
        elif isinstance(parsed, policy.Rejected):
            hostile.statuses["rejected"] += 1
        else:
            hostile.statuses["valid_ran"] += 1
    tally.figures.update(
        payloads=len(pushed),
        **hostile.statuses,
        unanswered=len(problems),
        consumer_errors=app.consumer_errors() - errors_before,
        answered_s=answered_s,
    )
    FIGURES.append(tally)
    assert not problems, f"{len(problems)} entries without a proper answer: {problems[:10]}"
    tally.check()
    assert tally.statuses == {"succeeded": len(good)}
    assert {*app.model_pids().values(), *app.consumer_pids().values()} == pids
    assert app.consumer_errors() == errors_before
