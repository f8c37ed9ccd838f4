"""The CLI's pure parts: --param parsing, job files, stats text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from producer.activity import RecentActivity
from producer.cli import build_parser, parse_param, settings_from
from producer.jobfile import read_job_lines
from producer.stats import ConsumerStats, QueueStats
from producer.verbs import stats_lines
from schemas.jobs import GenerationParams
from schemas.replicas import BackendStats, ReplicaHeartbeat


def test_parse_param_reads_json_values_else_text() -> None:
    assert parse_param("max_new_tokens=32") == ("max_new_tokens", 32)
    assert parse_param("temperature=0.7") == ("temperature", 0.7)
    assert parse_param('stop=["a","b"]') == ("stop", ["a", "b"])
    assert parse_param("stop=END") == ("stop", "END")
    assert parse_param("seed=null") == ("seed", None)
    assert parse_param("stop==") == ("stop", "=")
    for bad in ("novalue", "=3"):
        with pytest.raises(ValueError, match="key=value"):
            parse_param(bad)


def test_params_accumulate_and_list_params_collect() -> None:
    args = build_parser().parse_args(
        ["submit", "x", "--param", "stop=END", "--param", "stop=\n", "--param", "top_k=5"]
    )
    assert args.param == {"stop": ["END", "\n"], "top_k": 5}


def test_response_format_options(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    (tmp_path / "my schema.json").write_text(json.dumps(schema))
    args = build_parser().parse_args(
        ["submit", "x", "--json-schema", str(tmp_path / "my schema.json")]
    )
    fmt = args.response_format
    assert fmt == {"type": "json_schema", "json_schema": {"name": "my_schema", "schema": schema}}
    assert GenerationParams.model_validate({"response_format": fmt}).response_format is not None
    args = build_parser().parse_args(["submit", "x", "--choice", "spam, ham,other"])
    assert args.response_format == {"type": "choice", "choices": ["spam", "ham", "other"]}
    args = build_parser().parse_args(["submit", "x", "--regex", "[0-9]+"])
    assert args.response_format == {"type": "regex", "pattern": "[0-9]+"}
    assert build_parser().parse_args(["submit", "x"]).response_format is None
    with pytest.raises(SystemExit):  # one format at most
        build_parser().parse_args(["submit", "x", "--choice", "a", "--regex", "b"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "x", "--json-schema", str(tmp_path / "none.json")])


def test_connection_options_before_or_after_the_verb() -> None:
    before = build_parser().parse_args(["--prefix", "a", "get", "x"])
    after = build_parser().parse_args(["get", "x", "--prefix", "b", "--redis-url", "redis://h"])
    assert before.prefix == "a" and settings_from(before).prefix == "a"
    assert settings_from(after).prefix == "b"
    assert settings_from(after).redis_url == "redis://h"


def test_settings_from_the_environment_when_no_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAQ_PREFIX", "envp")
    assert settings_from(argparse.Namespace(redis_url=None, prefix=None)).prefix == "envp"


def test_job_lines_keep_good_ones_and_number_the_bad() -> None:
    parsed = read_job_lines(
        [
            '{"prompt": "a"}\n',
            "\n",
            "{oops\n",
            '"just a string"\n',
            '{"prompt": "b", "params": {"top_k": 5000}}\n',
            '{"messages": [{"role": "user", "content": "c"}], "id": "m1"}\n',
        ]
    )
    assert [job.prompt or job.id for job in parsed.jobs] == ["a", "m1"]
    assert all(job.id for job in parsed.jobs)
    assert [number for number, _ in parsed.problems] == [3, 4, 5]
    assert "not valid JSON" in parsed.problems[0][1]
    assert "expected a JSON object, got str" in parsed.problems[1][1]
    assert "params.top_k" in parsed.problems[2][1] and "1000" in parsed.problems[2][1]


def test_stats_lines() -> None:
    none_yet = QueueStats(stream_length=0, dead_letters=0, group_exists=False)
    assert stats_lines("p:jobs", "p:workers", none_yet)[1] == (
        "group p:workers: not created yet (no worker has started)"
    )
    busy = QueueStats(
        stream_length=9,
        dead_letters=1,
        group_exists=True,
        pending=2,
        lag=3,
        consumers=[ConsumerStats("w1", 2, 2500)],
        recent=RecentActivity(by_status={"running": 4, "succeeded": 3}),
        replicas=[
            ReplicaHeartbeat(
                replica="r1",
                adapters=["sql", "upper"],
                backend=BackendStats(rows_in_flight=2),
                ts=1.0,
                interval_s=5,
            )
        ],
    )
    assert stats_lines("p:jobs", "p:workers", busy) == [
        "stream p:jobs: 9 entries",
        "group p:workers: 2 pending, lag 3",
        "consumers: 1",
        "  w1: 2 pending, idle 2.5s",
        "dead letters: 1",
        "status events, last 60s: 4 running, 3 succeeded",
        "model replicas: 1",
        "  r1: 2 rows in flight; sql, upper",
    ]
