"""A request-header timeout for Serve's HTTP proxy (slowloris).

Serve's proxy runs uvicorn, which arms no timer before a request's headers are complete:
a client that connects and sends nothing, or trickles its headers a byte at a time (each
byte also disarms uvicorn's keep-alive timer), holds its connection for ever. Serve 2.60
has no setting for it, but it calls ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` in the
proxy process before uvicorn starts: :func:`install` is that callback. It points uvicorn's
``auto`` protocol at :class:`HeaderTimeoutProtocol`, the protocol uvicorn would pick
(httptools, else h11) with one timer more: a connection whose next request's headers are
not complete within :data:`TIMEOUT_ENV` seconds of its opening, or of the end of the
previous response, is closed. Requests already running are never cut.

``loraq serve`` sets both variables through Serve's controller options
(:func:`workers.launch.serve_start_options`); the proxy inherits them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import uvicorn.config
from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger(__name__)

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
TIMEOUT_ENV = "LORAQ_HTTP_HEADER_TIMEOUT_S"
CALLBACK = f"{__name__}:install"
PROTOCOL = f"{__name__}:HeaderTimeoutProtocol"

# mypy cannot subclass a variable; at run time it is httptools' or h11's protocol class.
_Protocol: Any = AutoHTTPProtocol


class HeaderTimeoutProtocol(_Protocol):  # type: ignore[misc]
    """uvicorn's HTTP protocol, closing connections whose request headers are late."""

    timeout_s = 10.0  # set by install()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        # The request the connection waits after (None: the first one): if it is still the
        # newest when the timer fires, no new request's headers came whole in time.
        self._header_timer = self.loop.call_later(self.timeout_s, self._headers_late, self.cycle)

    def _headers_late(self, waiting_after: Any) -> None:
        cycle = self.cycle
        idle = cycle is waiting_after and (cycle is None or cycle.response_complete)
        # A connection upgraded to another protocol (WebSocket) is no longer ours to time.
        if idle and self.transport.get_protocol() is self and not self.transport.is_closing():
            self.transport.close()


def install() -> list[Any]:
    """Serve's proxy callback: use :class:`HeaderTimeoutProtocol`; adds no middleware."""
    HeaderTimeoutProtocol.timeout_s = float(os.environ.get(TIMEOUT_ENV, "10"))
    uvicorn.config.HTTP_PROTOCOLS["auto"] = PROTOCOL
    log.info("request headers time out after %.1f s", HeaderTimeoutProtocol.timeout_s)
    return []


def proxy_env(timeout_s: float) -> dict[str, str]:
    """The variables that install the timeout in Serve's proxy. A callback of the user's
    own (already in the environment) is kept: then no header timeout is installed."""
    own = os.environ.get(CALLBACK_ENV)
    if own and own != CALLBACK:
        log.warning("%s is %r: Serve's proxy gets no header timeout", CALLBACK_ENV, own)
        return {}
    return {CALLBACK_ENV: CALLBACK, TIMEOUT_ENV: str(timeout_s)}
