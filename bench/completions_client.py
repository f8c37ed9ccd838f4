"""A batch of rows sent to an OpenAI-compatible server's ``/v1/completions``: loraq's app
and vLLM's own server are measured through the same client (``bench.served_openai``,
``bench.vllm_baselines``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from workers.engine.requests import GenerationRequest

# The rows at once (False) or in turn (True) -> (tokens generated, seconds); the shape of
# bench.engine_backends.RunBatch.
RunBatch = Callable[[list[GenerationRequest], bool], Awaitable[tuple[int, float]]]


def on_completions(
    session: Any, url: str, body: Callable[[GenerationRequest], dict[str, Any]], who: str
) -> RunBatch:
    """A run over ``url``'s ``/v1/completions`` through an ``aiohttp`` session: one client
    per row, tokens from each reply's usage."""

    async def one(request: GenerationRequest) -> int:
        async with session.post(url + "/v1/completions", json=body(request)) as reply:
            if reply.status != 200:
                raise RuntimeError(f"{who}: {reply.status} {await reply.text()}")
            return int((await reply.json())["usage"]["completion_tokens"])

    async def run(batch: list[GenerationRequest], one_at_a_time: bool) -> tuple[int, float]:
        started = time.perf_counter()
        if one_at_a_time:
            tokens = 0
            for request in batch:
                tokens += await one(request)
        else:
            tokens = sum(await asyncio.gather(*[one(r) for r in batch]))
        return tokens, time.perf_counter() - started

    return run
