"""vLLM's own two ways to serve, as baselines for ``bench/engine_backends.py``.

- **offline**: ``vllm.LLM.generate`` over the whole batch at once, vLLM's best case (no
  server, no asyncio, one call);
- **server**: vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``),
  what a user would run instead of loraq, driven by one HTTP client per row
  (``/v1/completions``).

Both get what loraq's vLLM backend asks of vLLM for the same settings
(:func:`workers.engine.vllm_config.engine_kwargs`: dtype, slots, rank, rows, context, KV
cache), the prompts as the same token ids (:func:`workers.engine.prompts.encode_request`),
greedy, and the adapters' folders under their names. Each returns a
:data:`bench.engine_backends.RunBatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from producer.embedded import free_port
from workers.engine.prompts import encode_request
from workers.engine.requests import GenerationRequest
from workers.settings import WorkerSettings

SERVER_START_TIMEOUT_S = 900.0  # vLLM's server starts in minutes on two busy cores
BASE_NAME = "base"


def _vllm_kwargs(settings: WorkerSettings) -> dict[str, Any]:
    """What :class:`~workers.engine.vllm_backend.VllmBackend` would ask of vLLM."""
    from workers.engine.vllm_backend import _meta_shapes
    from workers.engine.vllm_config import engine_kwargs

    shapes, positions, _ = _meta_shapes(settings)
    return engine_kwargs(settings, shapes, max_positions=positions, on_cpu=True)


def _token_ids(tokenizer: Any, settings: WorkerSettings, request: GenerationRequest) -> list[int]:
    return encode_request(
        tokenizer,
        request,
        max_input_tokens=settings.max_input_tokens,
        max_new_tokens=settings.max_new_tokens,
    )


@contextlib.contextmanager
def offline(settings: WorkerSettings) -> Iterator[Any]:
    """A :data:`RunBatch` over ``vllm.LLM`` for ``settings``'s model and adapter folder."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    llm = LLM(**_vllm_kwargs(settings))
    tokenizer = llm.get_tokenizer()
    ids: dict[str, int] = {}

    def lora(name: str | None) -> LoRARequest | None:
        if name is None or settings.adapter_dir is None:
            return None
        lora_id = ids.setdefault(name, len(ids) + 1)
        return LoRARequest(name, lora_id, str(Path(settings.adapter_dir) / name))

    def generate(batch: list[GenerationRequest]) -> int:
        prompts = [TokensPrompt(prompt_token_ids=_token_ids(tokenizer, settings, r)) for r in batch]
        params = [
            SamplingParams(max_tokens=r.params.max_new_tokens, temperature=0.0) for r in batch
        ]
        outputs = llm.generate(
            prompts, params, lora_request=[lora(r.adapter) for r in batch], use_tqdm=False
        )
        return sum(len(o.outputs[0].token_ids) for o in outputs)

    async def run(batch: list[GenerationRequest], one_at_a_time: bool) -> tuple[int, float]:
        started = time.perf_counter()
        tokens = sum(generate([request]) for request in batch) if one_at_a_time else generate(batch)
        return tokens, time.perf_counter() - started

    try:
        yield run
    finally:
        llm.llm_engine.engine_core.shutdown()


def server_command(settings: WorkerSettings, port: int, adapters: list[str]) -> list[str]:
    """vLLM's OpenAI server with the same engine arguments, the adapters by name."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    for key, value in _vllm_kwargs(settings).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif isinstance(value, dict):  # a config group: vLLM's CLI takes it as JSON
            command += [flag, json.dumps(value)]
        elif value is not None and value is not False:
            command += [flag, str(value)]
    folder = Path(settings.adapter_dir or ".")
    command += ["--served-model-name", BASE_NAME, "--port", str(port), "--host", "127.0.0.1"]
    if adapters:
        command += ["--lora-modules", *(f"{name}={folder / name}" for name in adapters)]
    return command


def _wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM's server exited with {process.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/health", timeout=5) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(2)
    raise TimeoutError(f"vLLM's server did not answer within {SERVER_START_TIMEOUT_S} s")


@contextlib.asynccontextmanager
async def server(settings: WorkerSettings, adapters: list[str]) -> AsyncIterator[Any]:
    """A :data:`RunBatch` over vLLM's OpenAI server: one client per row, each posting its
    prompt's token ids to ``/v1/completions`` (greedy), tokens from each reply's usage."""
    import aiohttp
    from transformers import AutoTokenizer

    from bench.completions_client import on_completions

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.devnull, "wb")  # noqa: SIM115 (closed below; vLLM logs every request)
    process = subprocess.Popen(server_command(settings, port, adapters), stdout=log, stderr=log)
    try:
        await asyncio.to_thread(_wait_ready, process, url)
        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            def body(request: GenerationRequest) -> dict[str, Any]:
                return {
                    "model": request.adapter or BASE_NAME,
                    "prompt": _token_ids(tokenizer, settings, request),
                    "max_tokens": request.params.max_new_tokens,
                    "temperature": 0.0,
                }

            run = on_completions(session, url, body, "vLLM's server")
            yield run
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
