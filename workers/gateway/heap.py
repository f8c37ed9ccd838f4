"""Hand freed heap memory back to the system after an upload.

Serve's replica pulls a request's whole body from its proxy as fast as the client sends
it, whatever the route reads (``ASGIReceiveProxy.fetch_until_disconnect``): an upload
refused at its first bytes still passes through the replica's heap, in 64 KiB pieces
that glibc keeps for reuse once they are freed. ``malloc_trim`` returns those pages, so
the replica's RSS comes back to where it was instead of staying tens of MB up.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

# Long enough for the request to be torn down (its connection closed, Serve's queue of
# its messages dropped) before the pages are handed back.
TRIM_DELAY_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim  # None off glibc (musl, macOS): nothing to do there


_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Return the heap's free pages to the system (a no-op without glibc)."""
    if _TRIM is not None:
        _TRIM(0)


def trim_heap_soon() -> None:
    """:func:`trim_heap` in a worker thread, :data:`TRIM_DELAY_S` from now."""
    loop = asyncio.get_running_loop()
    loop.call_later(TRIM_DELAY_S, lambda: loop.run_in_executor(None, trim_heap))
