"""The ``loraq`` command line: client verbs here, worker verbs from ``workers.cli`` if installed.

A producer-only install (``pip install loraq``) has the client verbs; the worker extra
adds ``serve``, ``demo`` and the rest through :func:`register_worker_verbs`, which finds
``workers.cli`` by its entry point (``loraq.verbs`` in pyproject.toml).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import orjson

from producer import batch_verbs, verbs
from producer.client import DEFAULT_CHUNK_SIZE, Producer
from producer.durability import ReplicationTimeoutError
from producer.errors import JobTimeoutError, JobValidationError, LoraqConnectionError
from producer.settings import ClientSettings
from schemas.jobs import GenerationParams

log = logging.getLogger(__name__)

EXIT_NO_REDIS = 3
VERBS_GROUP = "loraq.verbs"  # entry points of verbs other packages add

EPILOG = """\
exit codes: 0 ok; 1 job failed, was cancelled or expired, or a wait timed out;
2 invalid input; 3 Redis unreachable, or its replicas did not confirm a job in time
(LORAQ_REDIS_MIN_REPLICAS; submitting the same --id again is safe).
environment: LORAQ_REDIS_URL (default redis://127.0.0.1:6379/0), LORAQ_PREFIX (default loraq).
"""

# Parameters whose value is a list: `--param stop=X` given twice collects both.
_LIST_PARAMS = {
    name for name, info in GenerationParams.model_fields.items() if info.default_factory is list
}

ClientVerb = Callable[[argparse.Namespace, Producer], int]


class ParamAction(argparse.Action):
    """Collects repeated ``--param key=value`` into a dict; values are JSON when they parse."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        params = dict(getattr(namespace, self.dest) or {})
        try:
            key, value = parse_param(str(values))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        if key in _LIST_PARAMS and not isinstance(value, list):
            value = [*params.get(key, []), value]
        params[key] = value
        setattr(namespace, self.dest, params)


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with the value as JSON (``0.7``, ``true``, ``["x"]``), else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    try:
        return key, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return key, raw


def json_arg(text: str) -> Any:
    """An argument holding JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def json_schema_file(path: str) -> dict[str, Any]:
    """``--json-schema FILE``: the response_format holding the schema in ``FILE`` (named
    after the file)."""
    try:
        schema = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read a JSON schema from {path}: {exc}") from None
    name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)[:64] or "schema"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def choice_list(text: str) -> dict[str, Any]:
    """``--choice a,b,c``: the response_format of exactly one of those labels."""
    return {"type": "choice", "choices": [c.strip() for c in text.split(",") if c.strip()]}


def positive_int(text: str) -> int:
    """An argument holding a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _connection_options() -> argparse.ArgumentParser:
    # Accepted before or after the verb; SUPPRESS keeps a value given before it.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--redis-url", default=argparse.SUPPRESS, help="Redis URL")
    parent.add_argument("--prefix", default=argparse.SUPPRESS, help="key prefix {P}")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The full ``loraq`` parser, worker verbs included when the worker extra is installed."""
    parser = argparse.ArgumentParser(
        prog="loraq",
        description="One LLM, many LoRA adapters, behind a Redis Streams job queue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--redis-url", default=None, help="Redis URL (env LORAQ_REDIS_URL; default local)"
    )
    parser.add_argument("--prefix", default=None, help="key prefix {P} (env LORAQ_PREFIX)")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    add_client_verbs(subparsers, _connection_options())
    register_worker_verbs(subparsers)
    return parser


def _verb(
    subparsers: Any, parent: argparse.ArgumentParser, name: str, run: ClientVerb, text: str
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = subparsers.add_parser(
        name, help=text, description=text, parents=[parent], epilog=EPILOG
    )
    sub.set_defaults(func=run, needs_producer=True)
    return sub


def _wait_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait (default: no limit)"
    )
    sub.add_argument(
        "--follow", action="store_true", help="print text chunks as they are made, then the end"
    )


def add_client_verbs(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Register submit, submit-file, get, wait, cancel, stats, top, dead and adapters."""
    sub = _verb(subparsers, parent, "submit", verbs.submit, "Submit one job; print its id.")
    sub.add_argument("prompt", nargs="?", help="the prompt (or give --messages-json)")
    sub.add_argument("--adapter", help="adapter name (default: the base model)")
    sub.add_argument(
        "--param",
        action=ParamAction,
        default={},
        metavar="KEY=VALUE",
        help="generation parameter, repeatable: max_new_tokens=32 temperature=0.7 stop=END",
    )
    sub.add_argument(
        "--messages-json", type=json_arg, help='chat messages: \'[{"role":"user","content":"hi"}]\''
    )
    sub.add_argument("--metadata-json", type=json_arg, help="JSON object echoed in the record")
    formats = sub.add_mutually_exclusive_group()
    formats.add_argument(
        "--json-schema",
        dest="response_format",
        type=json_schema_file,
        metavar="FILE",
        help="the text is JSON valid against the JSON Schema in FILE (params.response_format)",
    )
    formats.add_argument(
        "--choice",
        dest="response_format",
        type=choice_list,
        metavar="A,B,C",
        help="the text is exactly one of these comma-separated labels",
    )
    formats.add_argument(
        "--regex",
        dest="response_format",
        type=lambda pattern: {"type": "regex", "pattern": pattern},
        metavar="PATTERN",
        help="the text matches this regular expression entirely",
    )
    sub.add_argument("--id", help="job id (default: a new unique id); an existing id is a no-op")
    sub.add_argument("--result-ttl", type=int, help="seconds the record lives after the end")
    sub.add_argument("--priority", type=int, help="higher starts first (-1000..1000, default 0)")
    sub.add_argument("--tenant", help="who the job is for: tenants share the workers by weight")
    sub.add_argument("--wait", action="store_true", help="wait and print the record as JSON")
    _wait_options(sub)

    sub = _verb(
        subparsers,
        parent,
        "submit-file",
        verbs.submit_file,
        "Submit a JSON Lines file of jobs (one job object per line; '-' reads stdin). "
        "Bad lines are reported with their number and skipped.",
    )
    sub.add_argument("path", help="jobs.jsonl, or - for stdin")
    sub.add_argument("--wait", action="store_true", help="wait for all; write records as JSONL")
    sub.add_argument("--out", help="where ids (or records with --wait) go; default stdout")
    sub.add_argument("--timeout", type=float, default=None, help="seconds to wait for all")
    sub.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="jobs per round trip"
    )

    sub = _verb(subparsers, parent, "get", verbs.get, "Print a job's record as JSON.")
    sub.add_argument("id")

    sub = _verb(
        subparsers, parent, "wait", verbs.wait, "Wait until a job ends; print its record as JSON."
    )
    sub.add_argument("id")
    _wait_options(sub)

    sub = _verb(subparsers, parent, "cancel", verbs.cancel, "Ask for a job to be cancelled.")
    sub.add_argument("id")

    sub = _verb(
        subparsers,
        parent,
        "stats",
        verbs.stats,
        "Queue state: stream length, pending, consumers and idle time, lag, dead letters, "
        "jobs by status over the last minute, live model replicas.",
    )
    sub.add_argument("--json", action="store_true", help="as one JSON object")

    sub = _verb(
        subparsers,
        parent,
        "top",
        verbs.top,
        "Live view: queue, consumers, model replicas and their warm adapters, throughput.",
    )
    sub.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    sub.add_argument("--frames", type=positive_int, help="draw this many frames, then exit")
    sub.add_argument("--once", action="store_true", help="print one frame and exit")
    add_dead_verbs(subparsers, parent)
    add_adapter_verbs(subparsers, parent)
    batch_verbs.add_batch_verbs(subparsers)


def add_adapter_verbs(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Register ``adapters list``, ``adapters add NAME PATH|URI`` and ``adapters remove NAME``."""
    adapters = subparsers.add_parser(
        "adapters",
        help="Adapters registered at run time: list, add, remove.",
        description="Adapters registered at run time ({P}:adapters): a folder, opened on the "
        "model replicas' machines and under their LORAQ_ADAPTER_DIR or a folder of "
        "LORAQ_ADAPTERS, or a remote URI (s3://, gs://, az://, hf://, https://) downloaded "
        "to each node's disk cache.",
    )
    verbs_of_adapters = adapters.add_subparsers(
        dest="adapters_verb", metavar="ACTION", required=True
    )
    sub = _verb(verbs_of_adapters, parent, "list", verbs.adapters_list, "Print the registrations.")
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub = _verb(
        verbs_of_adapters,
        parent,
        "add",
        verbs.adapters_add,
        "Register an adapter folder or URI under a name.",
    )
    sub.add_argument("name", help="the adapter name jobs will use")
    sub.add_argument(
        "location",
        metavar="PATH|URI",
        help="absolute path of the PEFT folder on the model replicas' machines, or "
        "s3://bucket/prefix, gs://…, az://…, hf://org/repo[@revision][/subfolder], "
        "https://host/folder",
    )
    sub.add_argument(
        "--replace",
        action="store_true",
        help="re-point a registered name (replicas switch within LORAQ_REGISTRY_SYNC_S)",
    )
    sub = _verb(
        verbs_of_adapters,
        parent,
        "remove",
        verbs.adapters_remove,
        "Remove a registration (replicas that loaded it keep it until they restart).",
    )
    sub.add_argument("name")


def add_dead_verbs(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Register ``dead list``, ``dead retry ID`` and ``dead purge``."""
    dead = subparsers.add_parser(
        "dead", help="Dead letters: list, retry, purge.", description="Dead letters ({P}:dead)."
    )
    verbs_of_dead = dead.add_subparsers(dest="dead_verb", metavar="ACTION", required=True)
    sub = _verb(verbs_of_dead, parent, "list", verbs.dead_list, "Print the oldest dead letters.")
    sub.add_argument("--limit", type=positive_int, default=20, help="how many (default 20)")
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub = _verb(
        verbs_of_dead,
        parent,
        "retry",
        verbs.dead_retry,
        "Requeue a dead letter's job as a new attempt (record back to queued); print its id.",
    )
    sub.add_argument("id", help="the dead letter's id (first column of `dead list`)")
    sub = _verb(verbs_of_dead, parent, "purge", verbs.dead_purge, "Delete every dead letter.")
    sub.add_argument("--yes", action="store_true", help="really delete them")


def register_worker_verbs(subparsers: Any) -> None:
    """Let each ``loraq.verbs`` entry point (``workers.cli.register``: ``serve``, ``demo``)
    add its verbs, where its dependencies are installed (the worker extra).

    Entry points rather than an import, so that the client side names no package above it.
    """
    for entry in entry_points(group=VERBS_GROUP):
        try:
            register = entry.load()
        except ImportError as exc:
            log.debug("no %s verbs: %s", entry.name, exc)
            continue
        register(subparsers)


def settings_from(args: argparse.Namespace) -> ClientSettings:
    """Client settings from the environment, overridden by ``--redis-url`` / ``--prefix``."""
    overrides = {
        name: getattr(args, name)
        for name in ("redis_url", "prefix")
        if getattr(args, name, None) is not None
    }
    return ClientSettings(**overrides)


def run(args: argparse.Namespace) -> int:
    """Run the chosen verb; expected failures become one line on stderr and an exit code."""
    if not getattr(args, "needs_producer", False):
        code: int = args.func(args)
        return code
    try:
        producer = Producer.from_settings(settings_from(args))
    except ValueError as exc:  # pydantic's ValidationError, or a URL redis-py cannot parse
        verbs.say(f"loraq: invalid settings: {exc}")
        return verbs.EXIT_USAGE
    try:
        with producer:
            code = args.func(args, producer)
            return code
    except JobValidationError as exc:
        verbs.say(f"loraq: invalid job: {exc}")
        return verbs.EXIT_USAGE
    except JobTimeoutError as exc:
        verbs.say(f"loraq: {exc}")
        return verbs.EXIT_JOB_FAILED
    except LoraqConnectionError as exc:
        verbs.say(f"loraq: {exc} (set LORAQ_REDIS_URL or --redis-url, or start `loraq serve`)")
        return EXIT_NO_REDIS
    except ReplicationTimeoutError as exc:  # an OSError too: before the branch below
        verbs.say(f"loraq: {exc}")
        return EXIT_NO_REDIS
    except OSError as exc:  # an unreadable jobs file, an unwritable --out
        verbs.say(f"loraq: {exc}")
        return verbs.EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loraq`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
