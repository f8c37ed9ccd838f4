"""The served app end to end with ``LORAQ_ENGINE=vllm``: the queue, the router and the
store around vLLM, held to the same accounting as the chaos suite."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from demo.tasks import expected_output
from producer import Producer
from schemas import codec
from tests.conftest import redis_cli
from tests.integration.chaos.accounting import FIGURES, account, streamed_text
from tests.integration.chaos.conftest import (
    JOBS,
    LONG_TOKENS,
    MODELS,
    ChaosApp,
    chaos_settings,
    deploy_chaos_app,
    kill,
)
from tests.integration.serve.conftest import MAX_NEW_TOKENS, delete_prefix
from workers import launch
from workers.settings import DEMO_DIR

# The demo kit babbles to max_new_tokens on long base-model prompts: jobs that run for
# seconds, long enough to be cancelled while they run. They go past the demo model's 128
# positions, which vLLM's context never does (workers.engine.vllm_config.max_model_len):
# the app serves a copy of the model whose config gives it LONG_POSITIONS (rotary
# embeddings take any position; below 128 nothing changes).
LONG_PROMPT = "abcde" * 20
LONG_POSITIONS = 4096


def long_context_model(root: Path) -> Path:
    """A copy of the demo model that declares LONG_POSITIONS positions."""
    folder = root / "model"
    shutil.copytree(DEMO_DIR / "model", folder)
    config = folder / "config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "max_position_embeddings": LONG_POSITIONS})
    )
    return folder


@pytest.fixture(scope="module")
def app(
    ray_serve: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChaosApp]:
    """Two vLLM model replicas (4 adapter slots each), one consumer, short leases."""
    settings = chaos_settings(
        redis_url,
        "vllm",
        engine="vllm",
        model=str(long_context_model(tmp_path_factory.mktemp("vllm-model"))),
        num_consumer_replicas=1,
        max_adapters_per_replica=4,
        max_lora_rank=16,
        max_input_tokens=256,
        # Two replicas on a shared machine: half the default each.
        vllm_kv_cache_gb=1.0,
    )
    app = deploy_chaos_app(ray_serve, settings)
    yield app
    launch.shutdown(app.running)
    delete_prefix(redis_url, app.settings.prefix)


def events(app: ChaosApp, job_id: str) -> list[dict[str, str]]:
    with app.client() as client:
        return [codec.decode_fields(f) for _, f in client.xrange(app.keys.job_events(job_id))]


def xadd(app: ChaosApp, job: dict[str, object]) -> str:
    """Enqueue ``job`` with the real redis-cli, as a client with nothing else would."""
    return redis_cli(app.redis_url, "XADD", app.keys.jobs, "*", "job", json.dumps(job)).strip()


def test_redis_cli_jobs_of_every_adapter_and_the_base_answer_right(app: ChaosApp) -> None:
    prompts = app.pool[:3]
    jobs = [(model, text) for text in prompts for model in MODELS]
    ids = [
        xadd(app, {"adapter": m, "prompt": t, "params": {"max_new_tokens": MAX_NEW_TOKENS}})
        for m, t in jobs
    ]
    with Producer.from_settings(app.settings) as producer:
        done = producer.wait_many(ids, 120)
    for job_id, (model, text) in zip(ids, jobs, strict=True):
        record = done[job_id]
        assert record.status.value == "succeeded", record
        assert record.result is not None and record.result.text == expected_output(model, text)
        assert record.result.adapter == model
        # Streamed chunks add up to the result.
        assert streamed_text(events(app, job_id)) == record.result.text
    warm = {a for stats in app.model_stats().values() for a in stats["adapters"]}
    assert warm >= {m for m in MODELS if m}, warm


def test_unknown_and_path_like_adapters_fail_cleanly(app: ChaosApp) -> None:
    cases = {"nope": "unknown_adapter", "../adapters/upper": "validation"}
    ids = {xadd(app, {"adapter": name, "prompt": "hello"}): kind for name, kind in cases.items()}
    with Producer.from_settings(app.settings) as producer:
        done = producer.wait_many(list(ids), 60)
        for job_id, kind in ids.items():
            record = done[job_id]
            assert record.status.value == "failed", record
            assert record.error is not None and record.error.type.value == kind, record
        # The replicas still serve.
        good = producer.submit(app.pool[0], adapter="upper")
        assert producer.wait(good, 60).result.text == expected_output("upper", app.pool[0])


def test_a_running_job_cancelled_stops(app: ChaosApp) -> None:
    with Producer.from_settings(app.settings) as producer:
        job_id = producer.submit(LONG_PROMPT, params={"max_new_tokens": LONG_TOKENS})
        deadline = time.monotonic() + 60
        while not streamed_text(events(app, job_id)):
            assert time.monotonic() < deadline, producer.get(job_id)
            time.sleep(0.02)
        assert producer.cancel(job_id)
        record = producer.wait(job_id, 60)
    assert record.status.value == "cancelled" and record.result is not None, record
    assert record.result.finish_reason == "cancelled" and record.attempts == 1
    assert record.result.completion_tokens < LONG_TOKENS
    assert record.result.text == streamed_text(events(app, job_id))


def engine_core(children: list[psutil.Process]) -> psutil.Process:
    """vLLM's engine-core process among a replica's ``children``."""
    cores = [c for c in children if c.name().startswith("VLLM::EngineCor")]
    assert len(cores) == 1, [c.name() for c in children]
    return cores[0]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("victim", ["model replica", "engine core"])
def test_sigkill_of_a_model_replica_with_100_jobs_in_flight(app: ChaosApp, victim: str) -> None:
    """The replica, or only vLLM's engine core under it (the replica then exits itself:
    vLLM never restarts an engine core): either way Serve starts another replica, no job
    is lost or answered twice, and no vLLM process is left behind."""
    app.wait_healthy()
    pids = app.model_pids()
    replica = psutil.Process(pids[min(pids)])
    # vLLM's engine core and worker run in child processes: they must die with it.
    children = replica.children(recursive=True)
    assert children, "the replica started no vLLM processes"
    target = replica.pid if victim == "model replica" else engine_core(children).pid
    started = time.monotonic()
    expected, left = app.under_way(seed=11)
    kill(target, signal.SIGKILL)
    killed_at = time.time()
    # A vLLM replica took 48-173 s to come back on these two shared cores.
    back_s = app.wait_replaced(app.model_pids, len(pids), replica.pid, timeout_s=360)
    app.wait_finished(list(expected), JOBS)
    orphans = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    with app.client() as client:
        tally = account(client, app.keys, expected, f"vLLM: SIGKILL {victim}")
    tally.figures.update(
        left_at_kill=left,
        replica_back_s=back_s,
        all_final_after_kill_s=tally.last_finished_at - killed_at,
        total_s=time.monotonic() - started,
    )
    FIGURES.append(tally)
    print(f"\n{tally.line()}")
    assert not orphans, f"vLLM processes outlived their replica: {orphans}"
    assert tally.statuses == {"succeeded": JOBS}
    assert not tally.problems, tally.problems[:10]
