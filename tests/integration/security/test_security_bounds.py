"""Issue 15: everything a client sends is bounded, and answers reveal nothing of the server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis

from producer.cli import main
from schemas import Keys
from tests.integration.conftest import HEADER_TIMEOUT_S
from tests.integration.gateway.conftest import GatewayApp
from tests.integration.security.conftest import BODY_TIMEOUT_S
from workers.queue.runner import InFlight, JobRunner
from workers.queue.store import JobStore
from workers.settings import WorkerSettings

SLOW_CONNECTIONS = 50
GARBAGE_ENTRIES = 10_000


def test_a_huge_model_name_gets_a_short_error(secure_app: GatewayApp) -> None:
    body = {"model": "m" * 4_000_000, "prompt": "hi"}
    reply = secure_app.request("POST", "/v1/completions", json=body)
    assert reply.status_code == 404
    assert len(reply.content) < 1024, len(reply.content)
    assert "4000000 characters" in reply.json()["error"]["message"]


def test_the_model_list_shows_no_server_path(secure_app: GatewayApp) -> None:
    reply = secure_app.request("GET", "/v1/models")
    assert reply.status_code == 200
    assert "/" not in reply.text.replace("\\/", "")  # no path, not even a relative one
    assert reply.json()["data"][0]["id"] == Path(secure_app.settings.model).name


def test_validation_errors_name_fields_as_the_client_does(secure_app: GatewayApp) -> None:
    body = {"adapter": "../etc", "prompt": "a", "params": {"max_new_tokens": 0}}
    reply = secure_app.request("POST", "/v1/jobs", json=body)
    assert reply.status_code == 422
    message = reply.json()["error"]["message"]
    assert "adapter: String should match pattern" in message
    assert "params.max_new_tokens: Input should be greater than or equal to 1" in message
    for internal in ("body.", "function-after", "list[", "Job"):
        assert internal not in message, message
    reply = secure_app.request("POST", "/v1/jobs", json=[{"prompt": "a"}, {"prompt": ""}])
    assert reply.json()["error"]["message"].startswith("[1].prompt: "), reply.text


def _slow_body(host: str, port: int, path: str) -> socket.socket:
    """A connection that sent its headers, then one byte of a 100-byte body."""
    sock = socket.create_connection((host, port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sec-key-a\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    sock.sendall(head.encode())
    return sock


def _closed_after(sock: socket.socket, started: float) -> float:
    """Seconds from ``started`` until the server closed ``sock`` (reading what it sent)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass  # closed with data of ours unread: a reset, closed all the same
    return time.monotonic() - started


def test_slow_and_idle_connections_are_closed(secure_app: GatewayApp) -> None:
    url = urlsplit(secure_app.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    started = time.monotonic()
    slow = [_slow_body(host, port, f"{url.path}/v1/jobs") for _ in range(SLOW_CONNECTIONS)]
    assert secure_app.request("GET", "/healthz", timeout=10).status_code == 200
    closed = [_closed_after(sock, started) for sock in slow]
    keep_alive_s = WorkerSettings().http_keep_alive_timeout_s
    # Each answered 408 and closed once its body was late (Serve's proxy adds its slack).
    assert max(closed) < BODY_TIMEOUT_S + 10, closed
    print(f"slow bodies closed after {min(closed):.1f}-{max(closed):.1f} s")

    idle = socket.create_connection((host, port), timeout=30)
    idle.sendall(f"GET {url.path}/healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answered = time.monotonic()
    idle_s = _closed_after(idle, answered)
    assert idle_s < keep_alive_s + 5, idle_s
    print(f"idle connection closed {idle_s:.1f} s after its response")


def _trickle_headers(sock: socket.socket, path: str, stop: threading.Event) -> None:
    """Send a request line, then one header line a second, never the blank line."""
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
        while not stop.wait(1.0):
            sock.sendall(b"X-Slow: 1\r\n")
    except OSError:
        pass  # the server closed it: what the test waits for


def test_slow_and_silent_headers_are_closed(secure_app: GatewayApp) -> None:
    url = urlsplit(secure_app.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    started = time.monotonic()
    stop = threading.Event()
    silent = [socket.create_connection((host, port), timeout=30) for _ in range(25)]
    trickling = [socket.create_connection((host, port), timeout=30) for _ in range(25)]
    senders = [
        threading.Thread(target=_trickle_headers, args=(sock, f"{url.path}/healthz", stop))
        for sock in trickling
    ]
    for sender in senders:
        sender.start()
    try:
        assert secure_app.request("GET", "/healthz", timeout=10).status_code == 200
        closed = [_closed_after(sock, started) for sock in silent + trickling]
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert max(closed) < HEADER_TIMEOUT_S + 5, closed
    print(f"slow and silent headers closed after {min(closed):.1f}-{max(closed):.1f} s")


def test_dead_letters_stay_under_their_cap_and_byte_limit(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    keys = Keys(prefix)
    settings = WorkerSettings(prefix=prefix, dead_maxlen=1000, dead_payload_max_bytes=1024)
    with r.pipeline(transaction=False) as pipe:
        for i in range(GARBAGE_ENTRIES):
            pipe.xadd(keys.jobs, {"job": ("\x00" * 1_000_000) if i % 1000 == 0 else f"junk{i}"})
        pipe.execute()
    asyncio.run(_run_garbage(redis_url, keys, settings))
    node_entries = int(r.config_get("stream-node-max-entries")["stream-node-max-entries"])
    assert r.xlen(keys.dead) <= settings.dead_maxlen + node_entries  # MAXLEN ~ trims whole nodes
    payloads = [fields[b"payload"] for _, fields in r.xrange(keys.dead)]
    assert max(len(p) for p in payloads) <= settings.dead_payload_max_bytes
    print(f"dead letters: {r.xlen(keys.dead)} entries, largest payload {max(map(len, payloads))} B")


async def _run_garbage(redis_url: str, keys: Keys, settings: WorkerSettings) -> None:
    """Read and answer every entry with the consumer's own runner (no model: all garbage)."""
    client = aioredis.Redis.from_url(redis_url)
    store = JobStore(client, keys, events_maxlen=100, dead_maxlen=settings.dead_maxlen)
    await store.ensure_group()
    # No dispatcher: garbage never reaches a model.
    runner = JobRunner(store, None, settings, "garbage")  # type: ignore[arg-type]
    while entries := await store.read("garbage", count=500, block_ms=10):
        await asyncio.gather(*(runner.run(entry, InFlight(entry.entry_id)) for entry in entries))
    await client.aclose()


def test_submit_file_reports_undecodable_lines(
    redis_url: str, prefix: str, r: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'{"prompt": "good"}\n\xff\xfe{"prompt": "bad"}\n{"prompt": "also good"}\n')
    code = main(["--redis-url", redis_url, "--prefix", prefix, "submit-file", str(path)])
    out, err = capsys.readouterr()
    assert code == 2  # bad lines were skipped
    assert f"{path}:2: not UTF-8 text" in err and "submitted 2 jobs" in err
    assert r.xlen(Keys(prefix).jobs) == 2 and len(out.split()) == 2


def test_adapters_add_refuses_folders_outside_the_roots(
    redis_url: str, prefix: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--redis-url", redis_url, "--prefix", prefix, "adapters", "add", "x", "/etc"])
    assert code == 2
    assert "outside the configured adapter roots" in capsys.readouterr().err
    assert not r.exists(Keys(prefix).adapters)
