"""The metric catalogue against the Grafana dashboard and docs/METRICS.md; pure parts."""

from __future__ import annotations

import itertools
import json
import re
import socket
from typing import Any

import pytest

from producer.embedded import free_port
from schemas import ErrorType, Job, JobError
from schemas.replicas import BackendStats
from tests.conftest import REPO
from workers import launch
from workers.serve import metrics as m

DASHBOARD = REPO / "deploy" / "grafana" / "loraq-dashboard.json"
DOC = REPO / "docs" / "METRICS.md"
NAME = re.compile(r"\bray_loraq_\w+")
EXPORTED = {name for spec in m.SPECS for name in spec.exported_names()}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def test_every_metric_the_dashboard_queries_is_defined() -> None:
    named = {name for expr in queries() for name in NAME.findall(expr)}
    assert named, "the dashboard queries no loraq metric"
    assert named <= EXPORTED, f"not defined in workers/serve/metrics.py: {named - EXPORTED}"


def test_the_dashboard_shows_every_metric() -> None:
    text = " ".join(queries())
    missing = [s.name for s in m.SPECS if not any(n in text for n in s.exported_names())]
    assert not missing


def test_the_dashboard_asks_for_its_prometheus_data_source() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_docs_table_lists_every_metric_as_scraped() -> None:
    rows = re.findall(r"^\| `(ray_loraq_\w+)` \| (\w+) \|", DOC.read_text(), flags=re.M)
    documented = dict(rows)
    expected = {spec.exported_names()[0].removesuffix("_bucket"): spec.kind for spec in m.SPECS}
    assert documented == expected


def test_metric_names_are_unique_and_prefixed() -> None:
    names = [spec.name for spec in m.SPECS]
    assert len(set(names)) == len(names)
    assert all(name.startswith("loraq_") for name in names)
    assert all(spec.boundaries for spec in m.SPECS if spec.kind == "histogram")


@pytest.mark.parametrize(
    ("job", "error", "label"),
    [
        (Job(prompt="x", adapter="upper"), None, "upper"),
        (Job(prompt="x"), None, m.BASE_LABEL),
        (
            Job(prompt="x", adapter="made-up"),
            JobError(type=ErrorType.UNKNOWN_ADAPTER, message="?"),
            m.UNKNOWN_LABEL,
        ),
        (None, JobError(type=ErrorType.VALIDATION, message="not JSON"), m.UNKNOWN_LABEL),
        (Job(prompt="x", adapter="upper"), JobError(type=ErrorType.INTERNAL, message="!"), "upper"),
    ],
)
def test_adapter_label_bounds_the_series_a_client_can_make(
    job: Job | None, error: JobError | None, label: str
) -> None:
    assert m.adapter_label(job, error) == label


def test_counter_deltas_count_everything_on_the_first_read_and_growth_after() -> None:
    first = BackendStats(**dict.fromkeys(m.ENGINE_COUNTERS, 3), forward_passes=9)
    assert m.counter_deltas(BackendStats(), first) == dict.fromkeys(m.ENGINE_COUNTERS, 3)
    later = first.model_copy(update={"cache_loads": 5, "tokens_generated": 10})
    deltas = m.counter_deltas(first, later)
    assert deltas["cache_loads"] == 2.0 and deltas["tokens_generated"] == 7.0
    assert deltas["cache_hits"] == 0.0


def test_whole_number_buckets_have_their_value_as_midpoint() -> None:
    # Ray rebuilds a histogram's sum from bucket midpoints: they must be the values.
    bounds = m.BATCH_SIZE.boundaries
    midpoints = [(low + high) / 2 for low, high in itertools.pairwise(bounds)]
    assert midpoints[:16] == [float(k) for k in range(1, 17)]


def test_a_taken_metrics_port_leaves_the_choice_to_ray() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        assert launch.metrics_port(port) is None
    free = free_port()
    assert launch.metrics_port(free) == free
    assert launch.metrics_port(0) is None
