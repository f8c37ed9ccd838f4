"""Bounds on request bodies, before anything parses them: size (413), time to arrive
(408), and JSON objects that repeat a key (422). The API key is checked before any of
them (:class:`~workers.gateway.auth.KeyBeforeBody`)."""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.validation import InvalidJob, check_unique_keys
from workers.gateway.errors import ApiError, error_response

# Sent with a refusal of a body that did not arrive whole: the rest of it may still be on
# its way, so the connection cannot carry another request.
_CLOSE = {"Connection": "close"}
UPLOAD_PATH = "/v1/files"
# Room for a multipart form's boundaries and headers around the file itself.
UPLOAD_OVERHEAD = 64 * 1024


class BodySizeLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` over the limit, at once, and
    for a body that turns out larger while it arrives (a chunked upload declares none);
    408 for a body not whole within ``body_timeout_s`` (a client trickling it holds a
    connection and a replica slot). Both close the connection.

    A JSON body is read here, at most one byte past the limit, and handed on whole: the
    routes parse JSON bodies whole anyway, and a refusal raised from inside FastAPI's own
    read would come out as its generic 400. An upload is not buffered: its route reads
    it as it streams, through :func:`bounded_receive`, which refuses it at the first
    piece past the limit or the deadline.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_timeout_s: float,
        max_upload_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        # File uploads (POST /v1/files) have a limit of their own, plus room for the form.
        self.max_upload_bytes = max(max_body_bytes, (max_upload_bytes or 0) + UPLOAD_OVERHEAD)

    def limit_of(self, scope: Scope) -> int:
        """The body limit of the request ``scope`` describes."""
        upload = scope.get("method") == "POST" and str(scope.get("path", "")).endswith(UPLOAD_PATH)
        return self.max_upload_bytes if upload else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await error_response(400, "validation", "Content-Length is not a number")(
                scope, receive, send
            )
            return
        limit = self.limit_of(scope)
        if declared is not None and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        if limit == self.max_upload_bytes and limit > self.max_body_bytes:
            deadline = asyncio.get_running_loop().time() + self.body_timeout_s
            await self.app(scope, self.bounded_receive(receive, limit, deadline), send)
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read_body(receive, limit)
        except TimeoutError:
            await error_response(408, "timeout", self._late_message(), _CLOSE)(scope, receive, send)
            return
        if body is None:
            await self._refuse(scope, receive, send, limit)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive, limit: int) -> Message | None:
        """The whole body as one message; ``None`` once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # the client went away: let the app see it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    def bounded_receive(self, receive: Receive, limit: int, deadline: float) -> Receive:
        """``receive`` for a route that reads its body as it streams: :class:`ApiError`
        413 at the first piece that takes the body past ``limit``, 408 past
        ``deadline`` (the event loop's clock); both close the connection."""
        size = 0

        async def bounded() -> Message:
            nonlocal size
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(408, "timeout", self._late_message(), _CLOSE) from None
            size += len(message.get("body", b""))
            if size > limit:
                raise ApiError(413, "payload_too_large", self._large_message(limit), _CLOSE)
            return message

        return bounded

    def _late_message(self) -> str:
        return f"the request body did not arrive within {self.body_timeout_s:g} s"

    def _large_message(self, limit: int) -> str:
        message = f"request body is over {limit} bytes"
        if limit == self.max_upload_bytes:
            message += " (a file is at most max_file_bytes)"
        return message

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        message = self._large_message(limit)
        await error_response(413, "payload_too_large", message, _CLOSE)(scope, receive, send)


class UniqueJsonKeys:
    """ASGI middleware: 422 for a JSON body with an object that repeats a key.

    FastAPI's parser keeps the last value, other parsers the first: a body such as
    ``{"adapter": "a", "adapter": "b"}`` would mean different jobs to different readers.
    Runs inside :class:`BodySizeLimit`, which hands the body on as one message.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ())) if scope["type"] == "http" else {}
        if b"json" not in headers.get(b"content-type", b""):
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = message.get("body", b"")
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # not JSON at all: the route's own parsing says so
        else:
            try:
                check_unique_keys(body)
            except InvalidJob as exc:
                await error_response(422, "validation", f"body: {exc}")(scope, receive, send)
                return
        await self.app(scope, _replay(message, receive), send)


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` that hands out ``first``, then whatever the client sends next."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
