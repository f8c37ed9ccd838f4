"""The client verbs of the `loraq` CLI, run as a separate process; the test is the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from producer.cli import main
from producer.embedded import free_port
from schemas import JobStatus, Keys
from tests.integration.producer_api.worker_role import WorkerRole

LORAQ = Path(sys.executable).parent / "loraq"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def loraq(redis_url: str, prefix: str) -> Run:
    """Run `loraq ARGS` with LORAQ_REDIS_URL and LORAQ_PREFIX set for this test."""

    def run(
        *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LORAQ_REDIS_URL": redis_url, "LORAQ_PREFIX": prefix}
        return subprocess.run(
            [sys.executable, "-m", "producer.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )

    return run


def when_record_exists(
    r: redis.Redis, keys: Keys, job_id: str, action: Callable[[], object]
) -> threading.Thread:
    """In the background: once the job's record appears, run ``action`` (the worker's part)."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not r.exists(keys.job(job_id)) and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def work_through_stream(
    r: redis.Redis, keys: Keys, worker: WorkerRole, count: int
) -> threading.Thread:
    """In the background: finish the first ``count`` jobs of the stream as they arrive."""

    def consume() -> None:
        last, done, deadline = "0-0", 0, time.monotonic() + 60
        while done < count and time.monotonic() < deadline:
            for _, entries in r.xread({keys.jobs: last}, block=200) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    job_id = orjson.loads(fields[b"job"])["id"]
                    status = JobStatus.FAILED if "fail" in job_id else JobStatus.SUCCEEDED
                    worker.finish(job_id, status, text=f"out {job_id}")
                    done += 1

    thread = threading.Thread(target=consume)
    thread.start()
    return thread


def test_help_explains_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    out = subprocess.run([LORAQ, "--help"], capture_output=True, text=True, check=True).stdout
    assert "exit codes" in out
    for verb in ("submit", "submit-file", "get", "wait", "cancel", "stats"):
        assert verb in out
        with pytest.raises(SystemExit) as exited:
            main([verb, "--help"])
        assert exited.value.code == 0
        assert f"usage: loraq {verb}" in capsys.readouterr().out


def test_submit_then_get(loraq: Run, r: redis.Redis, keys: Keys) -> None:
    done = loraq(
        "submit",
        "hello",
        "--adapter",
        "upper",
        "--param",
        "max_new_tokens=5",
        "--param",
        "temperature=0.5",
        "--param",
        "stop=END",
        "--metadata-json",
        '{"k":1}',
        "--priority",
        "7",
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    job = orjson.loads(r.xrange(keys.jobs)[0][1][b"job"])
    assert job["id"] == job_id and job["adapter"] == "upper" and job["priority"] == 7
    assert job["params"]["max_new_tokens"] == 5 and job["params"]["temperature"] == 0.5
    assert job["params"]["stop"] == ["END"] and job["metadata"] == {"k": 1}

    got = loraq("get", job_id)
    assert got.returncode == 0
    record = json.loads(got.stdout)
    assert (record["id"], record["status"], record["adapter"]) == (job_id, "queued", "upper")


def test_submit_wait_prints_the_record(
    loraq: Run, r: redis.Redis, keys: Keys, worker: WorkerRole
) -> None:
    thread = when_record_exists(r, keys, "cli-1", lambda: worker.finish("cli-1", text="HELLO"))
    done = loraq("submit", "hello", "--id", "cli-1", "--wait", "--timeout", "30")
    thread.join()
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "succeeded" and record["result"]["text"] == "HELLO"


def test_a_failed_job_exits_1(loraq: Run, r: redis.Redis, keys: Keys, worker: WorkerRole) -> None:
    thread = when_record_exists(r, keys, "cli-2", lambda: worker.finish("cli-2", JobStatus.FAILED))
    done = loraq(
        "submit",
        "--messages-json",
        '[{"role":"user","content":"hi"}]',
        "--id",
        "cli-2",
        "--wait",
        "--timeout",
        "30",
    )
    thread.join()
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"] == {"type": "internal", "message": "boom"}


def test_wait_follow_prints_chunks_then_the_end(
    loraq: Run, r: redis.Redis, keys: Keys, worker: WorkerRole
) -> None:
    r.hset(keys.job("cli-3"), mapping={"status": "queued"})

    def work() -> None:
        time.sleep(0.3)
        worker.start("cli-3")
        for piece in ("HEL", "LO ", "WORLD"):
            worker.chunk("cli-3", piece)
        worker.finish("cli-3", text="HELLO WORLD")

    thread = threading.Thread(target=work)
    thread.start()
    done = loraq("wait", "cli-3", "--follow", "--timeout", "30")
    thread.join()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HELLO WORLD\n"
    assert "[running]" in done.stderr and "[succeeded]" in done.stderr


def test_wait_follow_says_when_a_rerun_job_starts_its_text_again(
    loraq: Run, r: redis.Redis, keys: Keys, worker: WorkerRole
) -> None:
    # A first attempt streams part of its text, its replica dies, a second one runs.
    worker.start("cli-4")
    worker.chunk("cli-4", "HEL")
    worker.start("cli-4", attempt=2)
    for piece in ("HEL", "LO"):
        worker.chunk("cli-4", piece)
    worker.finish("cli-4", text="HELLO")
    done = loraq("wait", "cli-4", "--follow", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HEL\nHELLO\n"
    assert "[running, attempt 2: the text starts again]" in done.stderr


def test_wait_timeout_and_unknown_get_exit_1(loraq: Run) -> None:
    done = loraq("submit", "x", "--id", "slow")
    assert done.returncode == 0
    waited = loraq("wait", "slow", "--timeout", "0.3")
    assert waited.returncode == 1
    assert "slow" in waited.stderr and "Traceback" not in waited.stderr
    missing = loraq("get", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_cancel(loraq: Run, r: redis.Redis, keys: Keys, worker: WorkerRole) -> None:
    assert loraq("submit", "x", "--id", "c1").returncode == 0
    done = loraq("cancel", "c1")
    assert done.returncode == 0 and r.exists(keys.cancel("c1"))
    worker.finish("c1")
    assert loraq("submit", "y", "--id", "c2").returncode == 0
    worker.finish("c2")
    again = loraq("cancel", "c2")
    assert again.returncode == 1 and "already ended" in again.stderr


def test_stats_text_and_json(loraq: Run, r: redis.Redis, keys: Keys) -> None:
    empty = loraq("stats", "--json")
    assert empty.returncode == 0
    assert json.loads(empty.stdout)["group_exists"] is False
    assert "not created yet" in loraq("stats").stdout

    assert loraq("submit", "x").returncode == 0
    r.xgroup_create(keys.jobs, keys.group, id="0")
    r.xreadgroup(keys.group, "worker-a", {keys.jobs: ">"}, count=1)
    stats = json.loads(loraq("stats", "--json").stdout)
    assert (stats["stream_length"], stats["pending"], stats["lag"]) == (1, 1, 0)
    assert [c["name"] for c in stats["consumers"]] == ["worker-a"]
    text = loraq("stats").stdout
    assert "worker-a: 1 pending" in text and "dead letters: 0" in text


def test_submit_file_skips_bad_lines_and_reports_them(
    loraq: Run, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    lines = [
        '{"prompt": "one"}',
        "not json",
        '{"prompt": "two", "params": {"top_p": 7}}',
        "",
        '{"adapter": "upper"}',
        '{"prompt": "three", "id": "file-3"}',
        "[1, 2]",
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = loraq("submit-file", str(path))
    assert done.returncode == 2
    ids = done.stdout.split()
    assert len(ids) == 2 and ids[1] == "file-3"
    assert r.xlen(keys.jobs) == 2
    for number, word in ((2, "JSON"), (3, "params.top_p"), (5, "prompt"), (7, "object")):
        assert f"jobs.jsonl:{number}:" in done.stderr and word in done.stderr
    assert "Traceback" not in done.stderr


def test_submit_file_wait_writes_every_record(
    loraq: Run, r: redis.Redis, keys: Keys, worker: WorkerRole, tmp_path: Path
) -> None:
    ids = [f"ok-{i}" for i in range(40)] + ["fail-0"]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": i}) + "\n" for i in ids))
    out = tmp_path / "results.jsonl"

    thread = work_through_stream(r, keys, worker, len(ids))
    done = loraq(
        "submit-file",
        str(path),
        "--wait",
        "--out",
        str(out),
        "--timeout",
        "60",
        "--chunk-size",
        "16",
    )
    thread.join()
    assert done.returncode == 1  # one job failed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(rec["id"] for rec in records) == sorted(ids)
    by_id = {rec["id"]: rec for rec in records}
    assert by_id["ok-7"]["result"]["text"] == "out ok-7"
    assert by_id["fail-0"]["status"] == "failed"
    assert "40 succeeded" in done.stderr and "1 failed" in done.stderr


def test_submit_file_reads_stdin(loraq: Run, r: redis.Redis, keys: Keys) -> None:
    done = loraq("submit-file", "-", stdin='{"prompt": "a"}\n{"prompt": "b"}\n')
    assert done.returncode == 0, done.stderr
    assert r.xlen(keys.jobs) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["submit"],
        ["submit", "x", "--param", "top_k=-1"],
        ["submit", "x", "--param", "nonsense"],
        ["submit", "x", "--id", "bad id"],
        ["submit", "--messages-json", "{not json"],
        ["submit-file", "/no/such/file.jsonl"],
        ["frobnicate"],
    ],
)
def test_invalid_input_is_one_line_and_exit_2(
    args: list[str],
    redis_url: str,
    prefix: str,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LORAQ_REDIS_URL", redis_url)
    monkeypatch.setenv("LORAQ_PREFIX", prefix)
    try:
        code = main(args)
    except SystemExit as exited:  # argparse's own usage errors
        code = int(exited.code or 0)
    assert code == 2
    assert capsys.readouterr().err.strip()
    assert list(r.scan_iter(match=f"{prefix}:*")) == []


def test_unreachable_redis_is_one_line_and_exit_3(loraq: Run) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = loraq("--redis-url", url, "get", "x")
    assert done.returncode == 3
    assert url in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # The option is also accepted after the verb.
    assert loraq("get", "x", "--redis-url", url).returncode == 3
