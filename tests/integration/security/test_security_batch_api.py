"""Issue 29: the Batch API cannot be used to stall or bloat the gateway.

Each reproduction of the red-team pass runs against the live app with two keys while
``/healthz`` is polled every 0.2 s (never over 1 s) and the gateway replica's RSS is
sampled (under +64 MB during, back within 32 MB after): see :mod:`watch`.
"""

from __future__ import annotations

import asyncio
import http.client
import select
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
import redis.asyncio as aioredis
import requests
from pydantic import SecretStr

from schemas import Keys
from schemas.batches import Batch, BatchStatus, FileObject, RequestCounts
from tests.integration.gateway.conftest import GatewayApp, bearer
from tests.integration.security.conftest import KEY_A, KEY_B
from tests.integration.security.watch import watched
from workers.gateway.auth import ApiKeys
from workers.gateway.batch_store import BatchStore, StoredBatch

BOUNDARY = "sec29boundary"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
MIB = 1024 * 1024
BIG_LINES = 50_000
SEND_PIECE = 64 * 1024
FAST_S = 2.0


def form_part(name: str, value: bytes, *, filename: str | None = None, kind: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    head += f"Content-Type: {kind}\r\n" if kind else ""
    return head.encode() + b"\r\n" + value + b"\r\n"


def upload_form(content: bytes, *extra: bytes, filename: str = "in.jsonl") -> bytes:
    parts = [form_part("purpose", b"batch"), form_part("file", content, filename=filename)]
    return b"".join([*parts, *extra]) + f"--{BOUNDARY}--\r\n".encode()


class Sent:
    """A request sent piece by piece until the server answered: its reply and how much
    of the body had gone when the reply came (an upper bound of what the server read)."""

    def __init__(self, status: int, body: dict[str, Any], sent: int, seconds: float) -> None:
        self.status, self.body, self.sent, self.seconds = status, body, sent, seconds

    @property
    def message(self) -> str:
        return str(self.body.get("error", {}).get("message", ""))


def _connect(app: GatewayApp, path: str, headers: dict[str, str], length: int) -> socket.socket:
    url = urlsplit(app.url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=60)
    lines = [f"POST {url.path}{path} HTTP/1.1", f"Host: {url.hostname}"]
    lines += [f"{name}: {value}" for name, value in {**headers, "Content-Length": length}.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _reply(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, orjson.loads(response.read() or b"{}")


def send(
    app: GatewayApp,
    path: str,
    body: bytes,
    *,
    key: str | None = KEY_A,
    content_type: str = FORM_TYPE,
    stop_after: int | None = None,
) -> Sent:
    """POST ``body`` a piece at a time, stopping as soon as a reply is readable (or after
    ``stop_after`` bytes, then waiting for one)."""
    headers = {"Content-Type": content_type, **(bearer(key) if key else {})}
    started = time.monotonic()
    sock = _connect(app, path, headers, len(body))
    sent = 0
    try:
        while sent < len(body) and (stop_after is None or sent < stop_after):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                end = min(sent + SEND_PIECE, stop_after or len(body))
                sent += sock.send(body[sent:end])
            except (BrokenPipeError, ConnectionResetError):
                break
        select.select([sock], [], [], 30)
        status, reply = _reply(sock)
        return Sent(status, reply, sent, time.monotonic() - started)
    finally:
        sock.close()


def owner_of(key: str) -> str:
    owner = ApiKeys(SecretStr(key)).caller(key).owner
    assert owner is not None
    return owner


def put_file(app: GatewayApp, content: bytes, key: str = KEY_A) -> str:
    """Store ``content`` as ``key``'s input file straight in Redis (as one uploaded before
    ``max_batch_lines`` was lowered would be): the test is of batch creation."""
    meta = FileObject(
        id=f"file-{uuid.uuid4().hex}",
        bytes=len(content),
        created_at=int(time.time()),
        filename="direct.jsonl",
        purpose="batch",
    )

    with_store(app, lambda store: store.put_file(meta, content, owner=owner_of(key), ttl_s=3600))
    return meta.id


def with_store(app: GatewayApp, call: Callable[[BatchStore], Awaitable[None]]) -> None:
    """``call`` on a :class:`BatchStore` of the app's prefix (the test writes as a
    gateway replica would)."""

    async def run() -> None:
        client = aioredis.Redis.from_url(app.settings.effective_redis_url)
        try:
            await call(BatchStore(client, Keys(app.settings.prefix)))
        finally:
            await client.aclose()

    asyncio.run(run())


def timed(
    app: GatewayApp, method: str, path: str, **kwargs: Any
) -> tuple[requests.Response, float]:
    started = time.monotonic()
    reply = app.request(method, path, **kwargs)
    return reply, time.monotonic() - started


def refused_upload(app: GatewayApp, body: bytes, words: str) -> None:
    """``body`` uploaded under watch: 400 naming ``words``, within :data:`FAST_S`, the
    replica's bounds held. How much the client had sent by the refusal says little here:
    Serve's proxy reads a body ahead of the replica."""
    with watched(app) as watch:
        sent = send(app, "/v1/files", body)
    print(f"\n{words!r}: {sent.status} in {sent.seconds:.3f} s")
    assert sent.status == 400 and words in sent.message, sent.body
    assert sent.seconds < FAST_S, sent.seconds
    watch.check()


def test_a_million_line_file_is_refused_at_upload_naming_the_limit(secure_app: GatewayApp) -> None:
    body = upload_form(b"{}\n" * 1_000_000)
    refused_upload(secure_app, body, "more than 50000 lines (max_batch_lines)")


def test_a_million_line_file_is_refused_at_batch_creation_naming_the_limit(
    secure_app: GatewayApp,
) -> None:
    file_id = put_file(secure_app, b"{}\n" * 1_000_000)
    body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    with watched(secure_app) as watch:
        reply, took = timed(secure_app, "POST", "/v1/batches", json=body)
    print(f"\nbatch of 1,000,000 lines: {reply.status_code} in {took:.3f} s")
    assert reply.status_code == 400, reply.text
    assert "more than 50000 lines (max_batch_lines)" in reply.json()["error"]["message"]
    assert took < FAST_S, took
    watch.check()


def test_32_mib_of_short_lines_is_refused_at_the_first_line_past_the_limit(
    secure_app: GatewayApp,
) -> None:
    body = upload_form(b"{}\n" * (32 * MIB // 3))
    refused_upload(secure_app, body, "more than 50000 lines (max_batch_lines)")


def test_a_form_of_100000_parts_is_refused_at_its_ninth(secure_app: GatewayApp) -> None:
    body = b"".join(form_part(f"f{i}", b"x") for i in range(100_000)) + b"--%s--\r\n" % (
        BOUNDARY.encode()
    )
    assert len(body) > 5 * MIB
    refused_upload(secure_app, body, "more than 8 parts")


def test_an_upload_without_a_key_is_refused_before_its_body_is_read(
    secure_app: GatewayApp,
) -> None:
    body = upload_form(b'{"custom_id": "x"}\n' * (32 * MIB // 20))
    with watched(secure_app) as watch:
        sent = send(secure_app, "/v1/files", body, key=None, stop_after=16 * 1024)
        print(f"\nno key: {sent.status} after {sent.sent} bytes sent, in {sent.seconds:.3f} s")
        assert sent.status == 401, sent.body
        # The server answered having been sent 16 KiB: it read no more than that.
        assert sent.sent <= 16 * 1024 < 64 * 1024
        # And the connection is closed: the rest of the upload cannot be sent.
        sock = _connect(secure_app, "/v1/files", {"Content-Type": FORM_TYPE}, len(body))
        pushed = 0
        try:
            _ = select.select([sock], [], [], 30)
            assert _reply(sock)[0] == 401
            while pushed < len(body):
                pushed += sock.send(body[pushed : pushed + SEND_PIECE])
        except OSError:
            pass
        finally:
            sock.close()
        print(f"no key, pushing on after the 401: cut short after {pushed} bytes")
        assert pushed < len(body) // 2, pushed
    watch.check()


def test_a_second_file_a_nested_part_and_a_long_name_are_refused(secure_app: GatewayApp) -> None:
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n'
    nested = form_part("file", b"--x--\r\n", filename="n.jsonl", kind="multipart/mixed; boundary=x")
    cases = {
        "more than one file": upload_form(line, form_part("more", line, filename="b.jsonl")),
        "nested": b"".join([form_part("purpose", b"batch"), nested])
        + f"--{BOUNDARY}--\r\n".encode(),
        "file name is over 255": upload_form(line, filename="n" * 256),
    }
    for words, body in cases.items():
        sent = send(secure_app, "/v1/files", body)
        assert sent.status == 400 and words in sent.message, (words, sent.body)


def run_to_end(app: GatewayApp, batch_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch: dict[str, Any] = app.request("GET", f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} did not end")


def last_job_flagged(app: GatewayApp, batch_id: str, timeout_s: float) -> bool:
    """Whether the batch's last line's job is flagged cancelled (or ended) in time."""
    keys = Keys(app.settings.prefix)
    with redis.Redis.from_url(app.settings.effective_redis_url) as r:
        line = orjson.loads(r.lindex(keys.batch_lines(batch_id), -1) or b"{}")
        job_id = line["job_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = r.hget(keys.job(job_id), "status")
            if r.exists(keys.cancel(job_id)) or status in (b"cancelled", b"succeeded"):
                return True
            time.sleep(0.3)
    return False


def create_batch(app: GatewayApp, content: bytes, key: str = KEY_A) -> dict[str, Any]:
    sent = send(app, "/v1/files", upload_form(content), key=key)
    assert sent.status == 200, sent.body
    body = {"input_file_id": sent.body["id"], "endpoint": "/v1/completions"}
    reply = app.request("POST", "/v1/batches", json=body, headers=bearer(key))
    assert reply.status_code == 200, reply.text
    created: dict[str, Any] = reply.json()
    return created


def test_a_line_that_repeats_a_key_lands_in_the_error_file_naming_it(
    secure_app: GatewayApp,
) -> None:
    lines = [
        b'{"custom_id": "a", "custom_id": "b", "method": "POST", "url": "/v1/completions", '
        b'"body": {"model": "m", "prompt": "x"}}',
        b'{"custom_id": "c", "method": "POST", "url": "/v1/completions", '
        b'"body": {"model": "upper", "model": "rot13", "prompt": "x"}}',
    ]
    batch = run_to_end(secure_app, create_batch(secure_app, b"\n".join(lines))["id"])
    assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 2, batch
    content = secure_app.request("GET", f"/v1/files/{batch['error_file_id']}/content").content
    messages = [orjson.loads(line)["error"]["message"] for line in content.splitlines()]
    assert "duplicate key 'custom_id'" in messages[0], messages
    assert "duplicate key 'model'" in messages[1], messages


def test_after_another_keys_id_answers_as_an_unknown_id(secure_app: GatewayApp) -> None:
    mine = create_batch(secure_app, b"{not json\n")["id"]
    theirs = bearer(KEY_B)
    pages = [
        secure_app.request("GET", "/v1/batches", params={"after": after}, headers=theirs).json()
        for after in (mine, f"batch_{uuid.uuid4().hex}")
    ]
    assert (
        pages[0]
        == pages[1]
        == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    )
    listed = secure_app.request("GET", "/v1/batches", params={"limit": 100}, headers=theirs).json()
    assert mine not in [batch["id"] for batch in listed["data"]]
    assert mine in [b["id"] for b in secure_app.request("GET", "/v1/batches").json()["data"]]


def test_a_batch_whose_queuer_died_is_queued_by_the_next_read(secure_app: GatewayApp) -> None:
    # Left ``validating`` with no queuer's lease: as a replica that died right after it
    # answered the create leaves it.
    file_id = put_file(secure_app, b"{not json\n" * 3)
    now = int(time.time())
    batch = Batch(
        id=f"batch_{uuid.uuid4().hex}",
        endpoint="/v1/completions",
        input_file_id=file_id,
        status=BatchStatus.VALIDATING,
        created_at=now,
        expires_at=now + 3600,
        request_counts=RequestCounts(total=3),
    )
    stored = StoredBatch(batch, owner_of(KEY_A))
    with_store(secure_app, lambda store: store.create_batch(stored, ttl_s=3600))
    ended = run_to_end(secure_app, batch.id)
    assert ended["status"] == "completed" and ended["request_counts"]["failed"] == 3, ended


def test_a_batch_stored_before_its_lines_had_a_list_of_their_own_still_ends_right(
    secure_app: GatewayApp, r: redis.Redis
) -> None:
    # As a gateway before v1.3 left it: in progress, its lines one JSON array in the hash.
    now = int(time.time())
    batch = Batch(
        id=f"batch_{uuid.uuid4().hex}",
        endpoint="/v1/completions",
        input_file_id="file-gone",
        status=BatchStatus.IN_PROGRESS,
        created_at=now,
        expires_at=now + 3600,
        request_counts=RequestCounts(total=2, failed=2),
    )
    error = {"code": "validation", "message": "line 1: not JSON", "line": 1}
    lines = [{"line": n, "custom_id": None, "error": {**error, "line": n}} for n in (1, 2)]
    key = Keys(secure_app.settings.prefix).batch(batch.id)
    fields: dict[Any, Any] = {"batch": batch.model_dump_json(), "status": "in_progress"}
    fields["owner"] = owner_of(KEY_A)
    r.hset(key, mapping={**fields, "lines": orjson.dumps(lines)})
    r.expire(key, 3600)
    ended = run_to_end(secure_app, batch.id)
    assert ended["status"] == "completed" and ended["error_file_id"], ended
    content = secure_app.request("GET", f"/v1/files/{ended['error_file_id']}/content").content
    assert len(content.splitlines()) == 2


def big_file(base_model: str) -> bytes:
    rows = [
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {
                    "model": "upper" if i % 2 else base_model,
                    "prompt": "ab",
                    "max_tokens": 1,
                },
            }
        )
        for i in range(BIG_LINES)
    ]
    return b"\n".join(rows) + b"\n"


# Last of the folder (conftest.py): the app's consumer then reads the 50,000 cancelled
# lines for minutes, and a job queued after them waits (36 s for one job here).
@pytest.mark.leaves_backlog
def test_a_50000_line_batch_is_created_read_and_cancelled_quickly(secure_app: GatewayApp) -> None:
    file_id = put_file(secure_app, big_file(secure_app.settings.base_model_name))
    body = {"input_file_id": file_id, "endpoint": "/v1/completions"}
    other_list = f"{secure_app.url}/v1/batches"
    times: dict[str, float] = {}
    began = time.monotonic()
    phases: dict[str, float] = {}

    def other() -> requests.Response:
        return requests.get(other_list, headers=bearer(KEY_B), timeout=5)

    with watched(secure_app, other=other) as idle:
        time.sleep(5)  # the other key's list before the batch: the machine's own noise
    with watched(secure_app, other=other) as watch:
        reply, times["create"] = timed(secure_app, "POST", "/v1/batches", json=body)
        assert reply.status_code == 200, reply.text
        batch_id = reply.json()["id"]
        deadline = time.monotonic() + 180
        status, reads = "validating", list[float]()
        while status == "validating" and time.monotonic() < deadline:
            reply, took = timed(secure_app, "GET", f"/v1/batches/{batch_id}")
            status, reads = reply.json()["status"], [*reads, took]
            time.sleep(0.5)
        assert status == "in_progress", status
        phases["queued"] = round(time.monotonic() - began, 2)
        reply, took = timed(secure_app, "GET", f"/v1/batches/{batch_id}")
        times["read"] = max([*reads, took])
        assert reply.json()["request_counts"]["total"] == BIG_LINES
        reply, times["cancel"] = timed(secure_app, "POST", f"/v1/batches/{batch_id}/cancel")
        assert reply.json()["status"] in ("cancelling", "cancelled"), reply.text
        phases["cancelled"] = round(time.monotonic() - began, 2)
        # Its jobs are cancelled in the background, a slice at a time: the last line's too.
        # (The batch then ends ``cancelled`` once the consumer has read every entry, which
        # takes minutes here: the small batches' cancel tests follow that to the end.)
        assert last_job_flagged(secure_app, batch_id, timeout_s=120)
        phases["flagged"] = round(time.monotonic() - began, 2)
    print(f"\n50,000 lines: {times}, phases {phases}")
    assert max(times.values()) < FAST_S, times
    # The other key's list: under 100 ms (every request on a quiet machine). On a machine
    # whose own noise is larger (the list before the batch, printed), the bounds scale
    # with it: the median under 100 ms or 4 times the median before, every request under
    # 200 ms or 4 times the slowest before.
    print(
        f"other key's list before the batch: median {idle.median_other_s:.3f} s, "
        f"at most {idle.slowest_other_s:.3f} s"
    )
    assert watch.median_other_s < max(0.1, 4 * idle.median_other_s), watch
    assert watch.slowest_other_s < max(0.2, 4 * idle.slowest_other_s), watch
    watch.check()
