"""The client verbs of the ``loraq`` CLI; each returns the process exit code.

Exit codes: 0 ok, 1 a job failed, was cancelled or expired, or the wait timed out,
2 invalid input. Records go to stdout as JSON, messages to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from producer.adapter_registrations import AdapterRegistrations
from producer.client import Producer
from producer.dead_letters import DeadLetterError, DeadLetters
from producer.errors import JobTimeoutError, SubmitError
from producer.jobfile import read_job_lines
from producer.progress import progress_bar
from producer.settings import AdapterRootSettings
from producer.stats import QueueStats
from schemas import codec
from schemas.adapters import InvalidRegistration, adapter_roots
from schemas.jobs import Job
from schemas.records import JobRecord, JobStatus

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2


def say(message: str) -> None:
    """One line on stderr."""
    print(message, file=sys.stderr, flush=True)


def print_json(value: Any, out: IO[str] | None = None) -> None:
    """One compact JSON line (``jq`` makes it pretty)."""
    print(codec.dumps(value), file=out or sys.stdout, flush=True)


def record_exit(record: JobRecord) -> int:
    """0 for a succeeded job, 1 for any other end."""
    return EXIT_OK if record.status is JobStatus.SUCCEEDED else EXIT_JOB_FAILED


def submit(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq submit``: one job; its id, or its record with ``--wait``."""
    job_id = producer.submit(
        args.prompt,
        adapter=args.adapter,
        messages=args.messages_json,
        params=_with_format(args.param, args.response_format),
        id=args.id,
        result_ttl=args.result_ttl,
        metadata=args.metadata_json,
        priority=args.priority,
        tenant=args.tenant,
    )
    if not args.wait:
        print(job_id)
        return EXIT_OK
    if args.follow:
        return follow(producer, job_id, args.timeout)
    record = producer.wait(job_id, args.timeout)
    print_json(record)
    return record_exit(record)


def _with_format(params: dict[str, Any], fmt: dict[str, Any] | None) -> dict[str, Any]:
    """``--param`` values plus the format of ``--json-schema``, ``--choice`` or ``--regex``."""
    return params if fmt is None else {**params, "response_format": fmt}


def get(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq get``: the record as JSON; 1 when there is none."""
    record = producer.get(args.id)
    if record is None:
        say(f"loraq: no record for job {args.id} (unknown, expired, or not taken yet)")
        return EXIT_JOB_FAILED
    print_json(record)
    return EXIT_OK


def wait(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq wait``: block until the job ends, then print its record (or follow it)."""
    if args.follow:
        return follow(producer, args.id, args.timeout)
    record = producer.wait(args.id, args.timeout)
    print_json(record)
    return record_exit(record)


def follow(producer: Producer, job_id: str, timeout: float | None) -> int:
    """Print text chunks to stdout as they come, status changes and the end to stderr."""
    streamed = False
    final: JobStatus | None = None
    for event in producer.events(job_id, timeout):
        if event.event == "chunk" and event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
            streamed = True
        elif event.status is not None:
            final = event.status
            if not event.is_final:
                # A job run again (its replica died) streams its text from the start.
                restarted = streamed and event.status is JobStatus.RUNNING
                if restarted:
                    print(flush=True)
                    streamed = False
                again = f", attempt {event.attempt}: the text starts again" if restarted else ""
                say(f"[{event.status.value}{again}]")
    record = producer.get(job_id)
    if record is not None and record.result is not None and not streamed:
        sys.stdout.write(record.result.text)
        streamed = True
    if streamed:
        print(flush=True)
    status = record.status if record is not None else final
    detail = (
        f": {record.error.type.value}: {record.error.message}" if record and record.error else ""
    )
    say(f"[{status.value if status else 'unknown'}]{detail}")
    return EXIT_OK if status is JobStatus.SUCCEEDED else EXIT_JOB_FAILED


def cancel(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq cancel``: 0 when the job was live and will stop, 1 when it had ended/is unknown."""
    if producer.cancel(args.id):
        say(f"cancel requested for job {args.id}")
        return EXIT_OK
    say(f"loraq: job {args.id} has already ended or has no record; nothing to cancel")
    return EXIT_JOB_FAILED


def stats(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq stats``: the queue's state, as text or ``--json``."""
    found = producer.stats()
    if args.json:
        print_json(found.to_dict())
    else:
        print("\n".join(stats_lines(producer.keys.jobs, producer.keys.group, found)))
    return EXIT_OK


def top(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq top``: a live view of the queue, consumers and replicas; Ctrl-C leaves."""
    try:
        from rich.console import Console

        from producer.top import run_top
    except ImportError:  # a producer-only install has no rich
        say("loraq: `loraq top` needs rich (pip install rich, or the worker extra)")
        return EXIT_USAGE
    frames = 1 if args.once else args.frames
    with suppress(KeyboardInterrupt):
        run_top(producer, interval_s=args.interval, frames=frames, console=Console())
    return EXIT_OK


def stats_lines(stream: str, group: str, found: QueueStats) -> list[str]:
    """The stats as lines of text."""
    lines = [f"stream {stream}: {found.stream_length} entries"]
    if not found.group_exists:
        lines.append(f"group {group}: not created yet (no worker has started)")
    else:
        lag = "unknown" if found.lag is None else str(found.lag)
        lines.append(f"group {group}: {found.pending} pending, lag {lag}")
        lines.append(f"consumers: {len(found.consumers)}")
        for consumer in found.consumers:
            idle_s = consumer.idle_ms / 1000
            window = ""
            if consumer.window_depth is not None:
                window = (
                    f", window {consumer.window_depth} "
                    f"(oldest {consumer.window_oldest_wait_s or 0.0:.1f}s)"
                )
            lines.append(
                f"  {consumer.name}: {consumer.pending} pending, idle {idle_s:.1f}s{window}"
            )
    lines.append(f"dead letters: {found.dead_letters}")
    recent = found.recent
    counts = ", ".join(f"{n} {status}" for status, n in recent.by_status.items()) or "none"
    lines.append(f"status events, last {recent.window_s:.0f}s: {counts}")
    lines.append(f"model replicas: {len(found.replicas)}")
    for beat in found.replicas:
        adapters = ", ".join(beat.adapters) or "none warm"
        line = f"  {beat.replica}: {beat.backend.rows_in_flight} rows in flight; {adapters}"
        disk = beat.disk
        if disk.hits or disk.misses:  # adapters from remote storage
            line += (
                f"; disk tier {disk.hits} hits, {disk.misses} misses, {disk.downloads} "
                f"downloads ({disk.download_bytes / 2**20:.1f} MiB, "
                f"{disk.download_s_total:.1f}s), {disk.download_failures} failed"
            )
        lines.append(line)
    return lines


def submit_file(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq submit-file``: submit every valid line; ids (or records with ``--wait``) out."""
    with _open_input(args.path) as lines:
        parsed = read_job_lines(lines)
    for number, problem in parsed.problems:
        say(f"{args.path}:{number}: {problem} (line skipped)")
    with _open_output(args.out) as out:
        ids = _submit_chunks(producer, parsed.jobs, args.chunk_size)
        say(f"submitted {len(ids)} jobs, skipped {len(parsed.problems)} bad lines")
        code = _wait_all(producer, ids, args.timeout, out) if args.wait else _write_ids(ids, out)
    return EXIT_USAGE if parsed.problems and code == EXIT_OK else code


def _submit_chunks(producer: Producer, jobs: Sequence[Job], chunk_size: int) -> list[str]:
    ids: list[str] = []
    with progress_bar("submitting", len(jobs)) as advance:
        for start in range(0, len(jobs), chunk_size):
            chunk = jobs[start : start + chunk_size]
            try:
                ids.extend(producer.submit_many(chunk, chunk_size=chunk_size))
            except SubmitError as exc:
                ids.extend(exc.submitted)
                for job_id, reason in exc.failed.items():
                    say(f"loraq: job {job_id} not submitted: {reason}")
            advance(len(chunk))
    return ids


def _write_ids(ids: Iterable[str], out: IO[str]) -> int:
    for job_id in ids:
        print(job_id, file=out)
    return EXIT_OK


def _wait_all(producer: Producer, ids: list[str], timeout: float | None, out: IO[str]) -> int:
    statuses: Counter[str] = Counter()
    code = EXIT_OK
    with progress_bar("waiting", len(ids)) as advance:
        try:
            for record in producer.as_completed(ids, timeout):
                print_json(record, out)
                statuses[record.status.value] += 1
                advance(1)
        except JobTimeoutError as exc:
            say(f"loraq: {exc}")
            code = EXIT_JOB_FAILED
    say("ended: " + (", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none"))
    if set(statuses) - {JobStatus.SUCCEEDED.value}:
        code = EXIT_JOB_FAILED
    return code


@contextmanager
def _open_input(path: str) -> Iterator[Iterable[bytes]]:
    # Bytes, decoded line by line: one line that is not UTF-8 is a bad line, not the end.
    if path == "-":
        yield sys.stdin.buffer
        return
    with Path(path).open("rb") as handle:
        yield handle


@contextmanager
def _open_output(path: str | None) -> Iterator[IO[str]]:
    if path is None or path == "-":
        yield sys.stdout
        return
    with Path(path).open("w", encoding="utf-8") as handle:
        yield handle


def _dead_letters(producer: Producer) -> DeadLetters:
    return DeadLetters(producer.client, producer.keys, job_ttl_s=producer.job_ttl_s)


def dead_list(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq dead list``: the oldest dead letters, as text or ``--json`` lines."""
    letters = _dead_letters(producer)
    found = letters.oldest(args.limit)
    for letter in found:
        if args.json:
            print_json(letter.to_dict())
        else:
            print(letter.line())
    say(f"{len(found)} of {letters.count()} dead letters shown")
    return EXIT_OK


def dead_retry(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq dead retry``: requeue a dead letter's job as a new attempt; print its id."""
    try:
        job_id = _dead_letters(producer).retry(args.id)
    except DeadLetterError as exc:
        say(f"loraq: cannot retry {exc}")
        return EXIT_JOB_FAILED
    print(job_id)
    return EXIT_OK


def dead_purge(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq dead purge``: delete every dead letter; refuses without ``--yes``."""
    letters = _dead_letters(producer)
    if not args.yes:
        say(f"loraq: {letters.count()} dead letters would be deleted; add --yes to do it")
        return EXIT_USAGE
    say(f"deleted {letters.purge()} dead letters")
    return EXIT_OK


def adapters_list(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq adapters list``: the run-time registrations, as text or ``--json`` lines."""
    found = AdapterRegistrations(producer.client, producer.keys).all()
    for registered in found:
        if args.json:
            print_json(registered.to_dict())
        else:
            print(registered.line())
    say(f"{len(found)} adapters registered at run time")
    return EXIT_OK


def adapters_add(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq adapters add NAME PATH|URI [--replace]``: register an adapter under a name."""
    try:
        settings = AdapterRootSettings()
        roots = adapter_roots(settings.adapter_dir, settings.adapters)
        registrations = AdapterRegistrations(producer.client, producer.keys, roots=roots)
        added = registrations.add(args.name, args.location, replace=args.replace)
    except InvalidRegistration as exc:
        say(f"loraq: cannot register: {exc}")
        return EXIT_USAGE
    say(f"registered {args.name}" if added else f"{args.name} was already registered there")
    return EXIT_OK


def adapters_remove(args: argparse.Namespace, producer: Producer) -> int:
    """``loraq adapters remove NAME``: remove a registration."""
    try:
        removed = AdapterRegistrations(producer.client, producer.keys).remove(args.name)
    except InvalidRegistration as exc:
        say(f"loraq: cannot remove: {exc}")
        return EXIT_USAGE
    say(f"removed {args.name}" if removed else f"{args.name} was not registered")
    return EXIT_OK if removed else EXIT_JOB_FAILED
