"""Refuse request bodies over ``max_body_bytes`` with 413, before anything parses them."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.gateway.errors import error_response


class BodySizeLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` over the limit, at once, and
    for a body that turns out larger while it arrives (a chunked upload declares none).

    The body is read here, at most one byte past the limit, and handed on whole: the
    routes parse JSON bodies whole anyway, and a refusal raised from inside the route's
    own read would come out as FastAPI's generic 400.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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
        if declared is not None and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> Message | None:
        """The whole body as one message; ``None`` once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # the client went away: let the app see it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is over {self.max_body_bytes} bytes"
        await error_response(413, "payload_too_large", message)(scope, receive, send)


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` that hands out ``first``, then whatever the client sends next."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
