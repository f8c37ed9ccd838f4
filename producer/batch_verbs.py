"""``loraq batch submit|status|list|cancel``: the gateway's Batch API from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from producer.batch_http import BatchClient, GatewayError
from producer.progress import progress_bar
from producer.settings import GatewaySettings
from schemas.batches import Batch

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
POLL_S = 1.0


def _client(args: argparse.Namespace) -> BatchClient:
    overrides: dict[str, Any] = {}
    if args.gateway_url:
        overrides["gateway_url"] = args.gateway_url
    if args.api_key:
        overrides["api_key"] = args.api_key
    return BatchClient(GatewaySettings(**overrides))


def _line(batch: Batch) -> str:
    counts = batch.request_counts
    return (
        f"{batch.id}\t{batch.status.value}\ttotal={counts.total} completed={counts.completed} "
        f"failed={counts.failed}"
    )


def run(args: argparse.Namespace) -> int:
    """Run one batch verb; a refusal is one line on stderr and an exit code."""
    try:
        code: int = args.batch_func(_client(args), args)
        return code
    except GatewayError as exc:
        print(f"loraq batch: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.status == 0 else EXIT_FAILED
    except OSError as exc:
        print(f"loraq batch: {exc}", file=sys.stderr)
        return EXIT_USAGE


def submit(client: BatchClient, args: argparse.Namespace) -> int:
    """Upload the file, create the batch, print its id; with ``--wait``, follow it to the end."""
    uploaded = client.upload(Path(args.file))
    batch = client.create(uploaded.id, args.endpoint)
    print(batch.id, flush=True)
    if not args.wait:
        return EXIT_OK
    batch = _follow(client, batch)
    print(_line(batch))
    if args.out and batch.output_file_id:
        Path(args.out).write_bytes(client.content(batch.output_file_id))
    if args.errors and batch.error_file_id:
        Path(args.errors).write_bytes(client.content(batch.error_file_id))
    return EXIT_OK if batch.status.value == "completed" else EXIT_FAILED


def _follow(client: BatchClient, batch: Batch) -> Batch:
    """Poll until the batch ends, with a progress bar of its ended lines."""
    with progress_bar(f"batch {batch.id}", batch.request_counts.total) as advance:
        done = 0
        while not batch.status.is_final:
            time.sleep(POLL_S)
            batch = client.get(batch.id)
            now = batch.request_counts.completed + batch.request_counts.failed
            advance(now - done)
            done = now
    return batch


def status(client: BatchClient, args: argparse.Namespace) -> int:
    """Print a batch (``--json``: the whole object)."""
    batch = client.get(args.id)
    print(batch.model_dump_json() if args.json else _line(batch))
    return EXIT_OK


def list_batches(client: BatchClient, args: argparse.Namespace) -> int:
    """Print the newest batches, one a line."""
    for batch in client.list(args.limit).data:
        print(batch.model_dump_json() if args.json else _line(batch))
    return EXIT_OK


def cancel(client: BatchClient, args: argparse.Namespace) -> int:
    """Cancel a batch and print it."""
    print(_line(client.cancel(args.id)))
    return EXIT_OK


def add_batch_verbs(subparsers: Any) -> None:
    """Register ``batch submit FILE``, ``batch status ID``, ``batch list``, ``batch cancel ID``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--gateway-url", help="gateway URL (env LORAQ_GATEWAY_URL)")
    parent.add_argument("--api-key", help="API key (env LORAQ_API_KEY)")
    batch = subparsers.add_parser(
        "batch",
        help="OpenAI Batch API through the gateway: submit, status, list, cancel.",
        description="Batches of OpenAI requests (JSONL of {custom_id, method, url, body}) run "
        "as queue jobs by the HTTP gateway (LORAQ_GATEWAY_URL, default http://127.0.0.1:8000).",
    )
    batch.set_defaults(func=run, needs_producer=False)
    actions = batch.add_subparsers(dest="batch_verb", metavar="ACTION", required=True)
    sub = actions.add_parser("submit", parents=[parent], help="Upload FILE and start a batch.")
    sub.add_argument("file", help="JSONL input file")
    sub.add_argument(
        "--endpoint", default="/v1/completions", choices=["/v1/completions", "/v1/chat/completions"]
    )
    sub.add_argument("--wait", action="store_true", help="follow it to the end (progress bar)")
    sub.add_argument("--out", help="with --wait: write the output file here")
    sub.add_argument("--errors", help="with --wait: write the error file here")
    sub.set_defaults(batch_func=submit)
    sub = actions.add_parser("status", parents=[parent], help="Print a batch.")
    sub.add_argument("id")
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(batch_func=status)
    sub = actions.add_parser("list", parents=[parent], help="Print the newest batches.")
    sub.add_argument("--limit", type=int, default=20)
    sub.add_argument("--json", action="store_true")
    sub.set_defaults(batch_func=list_batches)
    sub = actions.add_parser("cancel", parents=[parent], help="Cancel a batch.")
    sub.add_argument("id")
    sub.set_defaults(batch_func=cancel)
