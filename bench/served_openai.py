"""Served over the OpenAI API: loraq (HF engine), loraq (``LORAQ_ENGINE=vllm``) and vLLM's
own OpenAI server, on the same model, adapters, dtype and prompts.

One client per row posts ``/v1/completions`` (greedy, ``max_tokens`` the shape's new
tokens): all rows at once, mixed over 8 adapters and on the base model only, then 8 of
the mixed rows one at a time (:func:`bench.engine_backends.measure`). loraq runs as
``loraq serve`` would (Ray Serve: gateway, ``LoRAModel`` replica, its backend); its
completions go from the gateway to the model replica through Serve's handle, no queue.
vLLM's server gets the prompts as the same token ids. The targets take turns, each
started fresh; tokens/s are the best of ``--repeats`` turns, ratios also the median of
each turn's. The greedy token counts of every run are compared.

loraq ``vllm`` over vLLM's server is the cost of loraq's seam (the backend, the Serve
handle and replica, the gateway) over vLLM's own HTTP front.

    python -m bench.served_openai [--model smollm2-135m] [--shapes 64x64] [--repeats 1]
                                  [--targets loraq_hf,loraq_vllm,vllm_server]

Writes bench/results/served_openai.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.completions_client import on_completions
from bench.engine import BATCH_ADAPTERS, RANK, model_kit
from bench.engine_backends import (
    RunBatch,
    measure,
    paired,
    sized,
    summary,
    token_mismatches,
)
from bench.engine_shapes import parse_shapes
from bench.report import save
from bench.vllm_baselines import server
from producer.embedded import free_port
from workers.engine.requests import GenerationRequest
from workers.settings import WorkerSettings

TARGETS = ("loraq_hf", "loraq_vllm", "vllm_server")
HOST = "127.0.0.1"


def loraq_settings(base: Path, adapters: Path, engine: str, dtype: str) -> WorkerSettings:
    """One model replica of ``engine``, room for every row and adapter of the bench."""
    name = f"bench-openai-{engine}"
    return WorkerSettings(
        app_name=name,
        http_route_prefix=f"/{name}",
        engine=engine,
        model=str(base),
        adapter_dir=str(adapters),
        adapters={},
        dtype=dtype,
        max_adapters_per_replica=BATCH_ADAPTERS,
        max_lora_rank=RANK,
        num_model_replicas=1,
        model_num_cpus=1.0,
        consumer_num_cpus=0.1,
        gateway_num_cpus=0.1,
        max_ongoing_requests=256,
        # The completions path needs no Redis; the app's consumer idles on a fresh prefix.
        prefix=f"loraqbench:{uuid.uuid4().hex[:10]}",
    )


@contextlib.asynccontextmanager
async def loraq(settings: WorkerSettings) -> AsyncIterator[RunBatch]:
    """A :data:`RunBatch` over loraq's ``/v1/completions``, the app served by Ray Serve."""
    import ray
    from ray import serve

    from workers import launch
    from workers.app import build_app

    port = free_port()
    launch.allow_slow_proxy_start()
    for attempt in range(3):  # a raylet on busy cores can miss Ray's 30 s start window
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # Ray raises a plain Exception for a node that did not start
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        serve.start(http_options={"host": HOST, "port": port})
        await asyncio.to_thread(
            serve.run,
            build_app(settings),
            name=settings.app_name,
            route_prefix=settings.http_route_prefix,
        )
        url = f"http://{HOST}:{port}{settings.http_route_prefix}"
        base_name = Path(settings.model).name
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            def body(request: GenerationRequest) -> dict[str, Any]:
                return {
                    "model": request.adapter or base_name,
                    "prompt": request.prompt,
                    "max_tokens": request.params.max_new_tokens,
                    "temperature": 0.0,
                }

            run = on_completions(session, url, body, "loraq")
            yield run
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def one_turn(
    target: str, settings: WorkerSettings, shapes: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    names = [f"ad{index:02d}" for index in range(BATCH_ADAPTERS)]

    async def main() -> list[dict[str, Any]]:
        context = (
            server(settings, names)
            if target == "vllm_server"
            else loraq(settings.model_copy(update={"engine": target.removeprefix("loraq_")}))
        )
        async with context as run:
            return await measure(run, shapes, adapters=BATCH_ADAPTERS, folder=settings.adapter_dir)

    return asyncio.run(main())


def run(args: argparse.Namespace) -> dict[str, Any]:
    shapes = parse_shapes(args.shapes)
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = model_kit(Path(tmp), args.model)
        settings = sized(loraq_settings(base, adapters, "hf", args.dtype), shapes)
        turns: dict[str, list[Any]] = {target: [] for target in targets}
        for turn in range(args.repeats):
            for target in targets:
                print(f"turn {turn + 1}, {target}", file=sys.stderr, flush=True)
                turns[target].append(one_turn(target, settings, shapes))
    return {target: summary(shapes, runs) for target, runs in turns.items()}


def lines_of(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> list[str]:
    names = list(results)
    lines = [
        f"# Served over the OpenAI API: {args.model}, {args.dtype}, one client per row, "
        f"{BATCH_ADAPTERS} adapters mixed ({os.cpu_count()} CPUs)",
        "",
        "| shape | " + " | ".join(f"{n} {run}" for run in ("mixed", "base") for n in names) + " |",
        "|---|" + "---:|" * (2 * len(names)),
    ]
    for index, row in enumerate(results[names[0]]):
        cells = [
            f"{results[n][index][f'{run}_tokens_per_s']:.0f}"
            for run in ("mixed", "base")
            for n in names
        ]
        lines.append(f"| {row['rows']} x {row['new_tokens']} | " + " | ".join(cells) + " |")
    if "vllm_server" in results:
        lines += [
            "",
            "Ratios over vLLM's server (best runs / median of the ratios within a turn):",
            "",
        ]
        for ours in [n for n in names if n != "vllm_server"]:
            for run in ("base", "mixed"):
                for index, row in enumerate(results[ours]):
                    best = (
                        row[f"{run}_tokens_per_s"]
                        / results["vllm_server"][index][f"{run}_tokens_per_s"]
                    )
                    within = paired(results, index, run, "vllm_server", ours=ours)
                    lines.append(
                        f"- {ours} / vllm_server, {run}, {row['rows']} x {row['new_tokens']}: "
                        f"{best:.2f} / {within:.2f}"
                    )
    mismatches = token_mismatches(results)
    lines.append(
        "\nGreedy token counts: "
        + ("**differ**: " + "; ".join(mismatches) if mismatches else "the same on every target.")
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shapes", default="64x64")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(args)
    lines = lines_of(results, args)
    lines.append(f"\nbench took {time.perf_counter() - started:.0f} s")
    save("served_openai", {"args": vars(args), "results": results}, lines)


if __name__ == "__main__":
    main()
