"""Tenant names are client-chosen: the labels a consumer shows them under (metrics,
heartbeat) and the per-tenant state it keeps stay bounded however many a client makes up."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from schemas import Job, JobResult, JobStatus
from schemas.jobs import TENANT_PATTERN
from schemas.tenants import DEFAULT_TENANT_LABEL, OVERFLOW_TENANT_LABEL
from workers.queue.tenant_labels import TenantLabels
from workers.queue.tenants import TenantBook
from workers.serve import metrics as m
from workers.settings import WorkerSettings


def test_no_tenant_can_be_named_like_the_shared_labels() -> None:
    for label in (OVERFLOW_TENANT_LABEL, DEFAULT_TENANT_LABEL):
        assert not re.match(TENANT_PATTERN, label)
    assert OVERFLOW_TENANT_LABEL != DEFAULT_TENANT_LABEL


def test_the_first_tenants_keep_their_names_and_later_ones_share_one_label() -> None:
    labels = TenantLabels(named=["gold"], max_labels=2)
    assert [labels.label(t) for t in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        OVERFLOW_TENANT_LABEL,
        "a",
        OVERFLOW_TENANT_LABEL,
        "b",
    ]
    # Named tenants and the default one keep theirs past the cap, first seen or not.
    assert labels.label("gold") == "gold"
    assert labels.label(None) == labels.label("") == DEFAULT_TENANT_LABEL
    # A tenant counted under the overflow label stays there (a series keeps its meaning).
    assert labels.label("c") == OVERFLOW_TENANT_LABEL


def test_a_cap_of_zero_shows_only_the_named_and_default_tenants() -> None:
    labels = TenantLabels(named=["gold"], max_labels=0)
    assert {labels.label(t) for t in ("x", "y", "gold", None)} == {
        OVERFLOW_TENANT_LABEL,
        "gold",
        DEFAULT_TENANT_LABEL,
    }


def test_the_setting_defaults_to_100_and_refuses_a_negative_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert WorkerSettings().tenant_labels_max == 100
    monkeypatch.setenv("LORAQ_TENANT_LABELS_MAX", "-1")
    with pytest.raises(ValueError, match="tenant_labels_max"):
        WorkerSettings()


def test_the_heartbeat_figures_have_one_entry_per_label_summed_past_the_cap() -> None:
    book = TenantBook({"gold": 2.0}, labels=TenantLabels({"gold": 2.0}, max_labels=1))
    tenants = ["a", "gold", ""] + [f"t{i}" for i in range(1000)]
    for i, tenant in enumerate(tenants):
        book.started(f"e{i}", tenant, 10, waited_s=float(i % 3), now=0.0)
    for i in range(len(tenants)):
        book.ended(f"e{i}", 4)
    waiting = Counter({"t5": 2, "t6": 3, "a": 1, "new": 1})
    figures = book.figures(waiting)
    assert set(figures) == {"a", "gold", DEFAULT_TENANT_LABEL, OVERFLOW_TENANT_LABEL}
    other = figures[OVERFLOW_TENANT_LABEL]
    assert other.started == 1000 and other.tokens == 4000
    assert other.waiting == 6 and other.in_flight == 0
    assert figures["a"].started == 1 and figures["a"].waiting == 1
    assert figures["gold"].tokens == 4


class Recorder:
    """Stands in for Ray's metric objects: what each was given, by tags."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def __call__(self, spec: m.MetricSpec) -> Any:
        calls = self.calls

        class Metric:
            def inc(self, value: float, tags: dict[str, str]) -> None:
                calls.append((spec.name, value, tags))

            observe = set = inc

        return Metric()


def test_the_metrics_tenant_label_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    for make in ("counter", "gauge", "histogram"):
        monkeypatch.setattr(m, make, recorder)
    metrics = m.ConsumerMetrics("app", "c1", TenantLabels(["gold"], max_labels=2))
    result = JobResult.model_validate(
        {
            "text": "x",
            "finish_reason": "length",
            "prompt_tokens": 1,
            "completion_tokens": 3,
            "timings": {"queue_ms": 5, "generation_ms": 7},
        }
    )
    for tenant in ["a", "b", "gold", None] + [f"t{i}" for i in range(500)]:
        job = Job(prompt="x", tenant=tenant)
        metrics.job_finished(job, JobStatus.SUCCEEDED, result=result, error=None)
    seen = {tags["tenant"] for _, _, tags in recorder.calls if "tenant" in tags}
    assert seen == {"a", "b", "gold", DEFAULT_TENANT_LABEL, OVERFLOW_TENANT_LABEL}
