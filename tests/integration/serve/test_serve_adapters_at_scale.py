"""Correctness at scale: the four demo adapters under 1,000 names, Zipf traffic through the
queue on the shared app (2 replicas × 2 device slots): every output is its adapter's
rule, and no adapter is ever evicted while a row uses it."""

from __future__ import annotations

import random
import time

import pytest
import redis

from demo.tasks import ADAPTER_RULES, expected_output
from schemas import JobStatus
from schemas.adapters import AdapterRegistration
from tests.conftest import REPO
from tests.integration.serve.conftest import MAX_NEW_TOKENS, LiveApp

NAMES = 1000
JOBS = 400
ZIPF_S = 1.1


def zipf_picks(names: list[str], count: int, rng: random.Random) -> list[str]:
    """``count`` names drawn with Zipf(``ZIPF_S``) weights over ``names`` (first = hottest)."""
    weights = [1 / (rank**ZIPF_S) for rank in range(1, len(names) + 1)]
    return rng.choices(names, weights=weights, k=count)


@pytest.mark.timeout(600)
def test_1000_names_of_the_demo_adapters_under_zipf_traffic_all_answer_right(
    live_app: LiveApp, kit_prompts: list[str], r: redis.Redis
) -> None:
    rng = random.Random(1795)
    rules = list(ADAPTER_RULES)
    names = {f"scale-{i:04d}": rules[i % len(rules)] for i in range(NAMES)}
    keys = live_app.keys
    r.hset(
        keys.adapters,
        mapping={
            name: AdapterRegistration(path=str(REPO / "demo" / "adapters" / rule)).model_dump_json()
            for name, rule in names.items()
        },
    )
    order = list(names)
    rng.shuffle(order)  # the hottest names are any of the four rules
    picks = [(name, rng.choice(kit_prompts)) for name in zipf_picks(order, JOBS, rng)]
    before = live_app.model_stats()
    started = time.monotonic()
    try:
        with live_app.producer() as producer:
            ids = producer.submit_many(
                [
                    {"adapter": name, "prompt": text, "params": {"max_new_tokens": MAX_NEW_TOKENS}}
                    for name, text in picks
                ]
            )
            done = producer.wait_many(ids, timeout=480)
            records = [done[job_id] for job_id in ids]
    finally:
        r.hdel(keys.adapters, *names)
    seconds = time.monotonic() - started
    wrong = [
        (name, text, record.result.text if record.result else record.error)
        for (name, text), record in zip(picks, records, strict=True)
        if record.status is not JobStatus.SUCCEEDED
        or record.result is None
        or record.result.text != expected_output(names[name], text)
    ]
    after = live_app.model_stats()
    loads = sum(
        s["cache_loads"] - before.get(rid, {}).get("cache_loads", 0) for rid, s in after.items()
    )
    distinct = len({name for name, _ in picks})
    print(
        f"\nscale: {JOBS} jobs over {distinct} of {NAMES} names in {seconds:.1f} s "
        f"({JOBS / seconds:.1f} jobs/s), {loads} device loads"
    )
    assert wrong == []
    for replica, stats in after.items():
        assert stats["in_use_evictions"] == 0, replica
