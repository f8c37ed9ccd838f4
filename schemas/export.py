"""Write the generated files of the wire contract: ``python -m schemas.export``.

The JSON Schema files under ``schemas/json/`` are checked in so that clients in other
languages can validate against them, and ``schemas/lua/statuses.lua`` so that the queue's
scripts follow the state machine of :mod:`schemas.records`; a test fails when they are
stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.adapters import AdapterRegistration
from schemas.batches import Batch, BatchCreate, BatchOutputLine, BatchRequestLine, FileObject
from schemas.jobs import GenerationParams, Job
from schemas.records import JobError, JobEvent, JobRecord, JobResult
from schemas.scripts import STATUSES_LUA, statuses_lua

JSON_DIR = Path(__file__).resolve().parent / "json"

MODELS: dict[str, type[BaseModel]] = {
    "job": Job,
    "generation_params": GenerationParams,
    "job_record": JobRecord,
    "job_result": JobResult,
    "job_error": JobError,
    "job_event": JobEvent,
    "adapter_registration": AdapterRegistration,
    "batch": Batch,
    "batch_create": BatchCreate,
    "batch_request_line": BatchRequestLine,
    "batch_output_line": BatchOutputLine,
    "file_object": FileObject,
}


def render(model: type[BaseModel]) -> str:
    """The JSON Schema of ``model`` as stable, pretty-printed text."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://loraq.dev/schemas/v1/{model.__name__}.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def rendered() -> dict[Path, str]:
    """Every generated file's path and expected content."""
    schemas = {JSON_DIR / f"{name}.json": render(model) for name, model in MODELS.items()}
    return {**schemas, STATUSES_LUA: statuses_lua()}


def main() -> int:
    """Write the files; print what changed."""
    JSON_DIR.mkdir(exist_ok=True)
    for path, text in rendered().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(JSON_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
