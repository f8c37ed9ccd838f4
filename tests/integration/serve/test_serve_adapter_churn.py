"""Run-time registrations come and go while jobs run: the removed ones are unloaded from
every replica (device and host memory) within the registry sync bound and their later
jobs fail ``unknown_adapter``; the others keep giving their rule's output."""

from __future__ import annotations

import time

import redis

from demo.tasks import expected_output
from producer.adapter_registrations import AdapterRegistrations
from schemas import JobStatus
from tests.conftest import REPO
from tests.integration.serve.conftest import MAX_NEW_TOKENS, LiveApp

# Run-time name -> the demo folder (and so the rule) it stands for.
KEEP = {"churn-keep-upper": "upper", "churn-keep-rot13": "rot13"}
DROP = {"churn-drop-reverse": "reverse", "churn-drop-title": "title"}


def submit(app: LiveApp, jobs: list[tuple[str, str]]) -> list[str]:
    params = {"max_new_tokens": MAX_NEW_TOKENS}
    with app.producer() as producer:
        return producer.submit_many(
            [{"adapter": name, "prompt": prompt, "params": params} for name, prompt in jobs]
        )


def assert_right(app: LiveApp, ids: list[str], jobs: list[tuple[str, str]]) -> None:
    with app.producer() as producer:
        records = producer.wait_many(ids, timeout=240)
    for job_id, (name, prompt) in zip(ids, jobs, strict=True):
        record = records[job_id]
        assert record.status is JobStatus.SUCCEEDED, record
        assert record.result is not None
        assert record.result.text == expected_output({**KEEP, **DROP}[name], prompt)


def held(app: LiveApp, names: set[str]) -> dict[str, set[str]]:
    """The names each replica still holds on the device or in host memory."""
    return {
        replica: names & {*stats["adapters"], *stats["host_adapters"]}
        for replica, stats in app.model_stats().items()
    }


def test_removed_registrations_are_unloaded_everywhere_and_fail_their_jobs(
    live_app: LiveApp, r: redis.Redis, kit_prompts: list[str]
) -> None:
    registrations = AdapterRegistrations(r, live_app.keys)
    for name, folder in {**KEEP, **DROP}.items():
        registrations.add(name, str(REPO / "demo" / "adapters" / folder))
    try:
        warm = [(name, kit_prompts[i]) for i in range(6) for name in [*KEEP, *DROP]]
        assert_right(live_app, submit(live_app, warm), warm)
        assert any(held(live_app, set(DROP)).values()), "no replica ever held them"
        removed_before = sum(s["adapters_removed"] for s in live_app.model_stats().values())

        # Jobs of the kept names run while the others are removed.
        running = [(name, kit_prompts[i]) for i in range(6, 18) for name in KEEP]
        running_ids = submit(live_app, running)
        for name in DROP:
            assert registrations.remove(name)
        bound_s = 3 * live_app.settings.registry_sync_s + 10
        deadline = time.monotonic() + bound_s
        while any(held(live_app, set(DROP)).values()):
            assert time.monotonic() < deadline, held(live_app, set(DROP))
            time.sleep(0.2)
        stats = live_app.model_stats().values()
        assert sum(s["adapters_removed"] for s in stats) > removed_before
        assert all(s["in_use_evictions"] == 0 for s in stats)

        late = [(name, kit_prompts[0]) for name in DROP]
        with live_app.producer() as producer:
            records = producer.wait_many(submit(live_app, late), timeout=60)
        for record in records.values():
            assert record.status is JobStatus.FAILED and record.error is not None, record
            assert record.error.type.value == "unknown_adapter" and record.attempts == 1
        assert_right(live_app, running_ids, running)
    finally:
        r.hdel(live_app.keys.adapters, *KEEP, *DROP)
