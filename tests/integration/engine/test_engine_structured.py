"""Structured output on the HF engine: constrained and free rows of 8 adapters in one pass,
bad formats refused before their row runs, hostile ones bounded while others generate."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_kit import start_engine, stop_engine
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structured_kit import (
    ADAPTERS,
    MAX_NEW_TOKENS,
    ROWS,
    build_models,
    check_constrained,
    response_format,
    row_adapter,
    row_params,
    row_prompt,
)

from schemas import ErrorType, GenerationParams
from workers.engine.engine import Engine
from workers.engine.requests import EngineError, GenerationRequest
from workers.settings import WorkerSettings


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_models(tmp_path_factory.mktemp("structured"))


@pytest.fixture(scope="module")
def engine(models: tuple[Path, Path]) -> Iterator[Engine]:
    base, adapters = models
    settings = WorkerSettings.model_validate(
        {
            "model": str(base),
            "adapter_dir": str(adapters),
            "adapters": {},
            "max_adapters_per_replica": len(ADAPTERS),
            "max_batch_size": ROWS,
            # Long enough that all 64 rows of a gather join one admission.
            "batch_wait_ms": 300,
            "max_input_tokens": 64,
            "max_new_tokens": MAX_NEW_TOKENS,
            "grammar_compile_timeout_s": 2.0,
            "max_schema_bytes": 8192,
        }
    )
    engine = start_engine(settings)
    yield engine
    stop_engine(engine)


def row_request(row: int) -> GenerationRequest:
    return GenerationRequest(
        adapter=row_adapter(row), prompt=row_prompt(row), params=row_params(row)
    )


async def test_mixed_batch_of_constrained_and_free_rows(engine: Engine) -> None:
    # Adapters warm first, so that every row joins the same admission.
    await asyncio.gather(*(engine.generate(row_request(r)) for r in range(1, 16, 2)))
    outputs = await asyncio.gather(*(engine.generate(row_request(r)) for r in range(ROWS)))
    # One forward pass carried all 8 adapters, constrained and free rows together.
    assert any(len(adapters) == len(ADAPTERS) for adapters in engine.recent_passes())
    constrained = [r for r in range(ROWS) if response_format(r) is not None]
    assert len(constrained) == ROWS // 2
    for row in constrained:
        assert outputs[row].finish_reason == "stop", (row, outputs[row].text)
        check_constrained(row, outputs[row].text)
    free = [r for r in range(ROWS) if response_format(r) is None]
    alone = await asyncio.gather(*(engine.generate(row_request(r)) for r in free))
    assert [outputs[r].text for r in free] == [output.text for output in alone]


async def test_regex_choice_and_json_object(engine: Engine) -> None:
    choices = ['say "hi"', "new\nline", "back\\slash"]
    formats: list[dict[str, object]] = [
        {"type": "regex", "pattern": r"[a-z]{2,5}@ex\.com"},
        {"type": "choice", "choices": choices},
        {"type": "json_object"},
    ]
    outputs = await asyncio.gather(
        *(
            engine.generate(
                GenerationRequest(
                    adapter="s1",
                    prompt="p",
                    params=GenerationParams.model_validate(
                        {"max_new_tokens": 60, "response_format": fmt}
                    ),
                )
            )
            for fmt in formats
        )
    )
    assert re.fullmatch(r"[a-z]{2,5}@ex\.com", outputs[0].text)
    assert outputs[1].text in choices
    assert outputs[2].text.startswith("{")


async def refusal(engine: Engine, fmt: dict[str, object]) -> str:
    request = GenerationRequest(
        adapter=None,
        prompt="p",
        params=GenerationParams.model_validate({"max_new_tokens": 8, "response_format": fmt}),
    )
    with pytest.raises(EngineError) as caught:
        await engine.generate(request)
    assert caught.value.type == ErrorType.VALIDATION
    return str(caught.value)


async def test_bad_formats_fail_validation_naming_the_problem(engine: Engine) -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(400)}}
    assert "8192" in await refusal(
        engine, {"type": "json_schema", "json_schema": {"name": "big", "schema": big}}
    )
    assert "Lookahead" in await refusal(engine, {"type": "regex", "pattern": "(?=a)b"})
    bad_ref = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    assert "missing" in await refusal(
        engine, {"type": "json_schema", "json_schema": {"name": "r", "schema": bad_ref}}
    )


def _nest(depth: int, kind: str) -> dict[str, object]:
    schema: dict[str, object] = {"type": "integer", "minimum": 0, "maximum": 9}
    for _ in range(depth):
        if kind == "array":
            schema = {"type": "array", "items": schema, "maxItems": 2}
        elif kind == "object":
            schema = {"type": "object", "properties": {"n": schema}, "required": ["n"]}
        else:
            schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


RECURSIVE: list[dict[str, object]] = [
    {  # a linked list: recursion with a way out
        "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
        "$ref": "#/$defs/n",
    },
    {  # no way out: every object needs another
        "$defs": {
            "n": {
                "type": "object",
                "properties": {"next": {"$ref": "#/$defs/n"}},
                "required": ["next"],
            }
        },
        "$ref": "#/$defs/n",
    },
    {"type": "array", "items": {"$ref": "#"}},  # the root itself
    {  # mutual recursion
        "$defs": {
            "a": {"type": "array", "items": {"$ref": "#/$defs/b"}, "maxItems": 2},
            "b": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "boolean"}]},
        },
        "$ref": "#/$defs/a",
    },
]
PATTERNS = [
    "(a|aa){{1,{n}}}b",
    "(x+x+)+y",
    "((a|b)*c){{{n}}}",
    "[\\s\\S]{{{n}}}",
    "(a*)*b",
    "(.*a){{{n}}}",
    "(\\d+\\.?)+$",
    "(([a-z])+.)+[A-Z]([a-z])+",
    "(a{{1,{n}}}){{1,{n}}}",
]


def _json(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "hostile", "schema": schema}}


hostile_formats = st.one_of(
    st.builds(
        lambda depth, kind: _json(_nest(depth, kind)),
        st.integers(1, 40),
        st.sampled_from(["array", "object", "anyOf"]),
    ),
    st.builds(
        lambda n, width: _json({"enum": [f"v{i}" + "x" * width for i in range(n)]}),
        st.integers(1, 3000),
        st.integers(0, 40),
    ),
    st.builds(
        lambda pattern, n: {"type": "regex", "pattern": pattern.format(n=n)},
        st.sampled_from(PATTERNS),
        st.integers(1, 2000),
    ),
    st.sampled_from(RECURSIVE).map(_json),
)
BOUND_S = 6.0  # compile timeout (2 s) + a short row, with room for a loaded machine


@pytest.fixture(scope="module")
def hostile_engine(models: tuple[Path, Path]) -> Iterator[tuple[Engine, asyncio.AbstractEventLoop]]:
    base, adapters = models
    settings = WorkerSettings.model_validate(
        {
            "model": str(base),
            "adapter_dir": str(adapters),
            "adapters": {},
            "batch_wait_ms": 2,
            "max_input_tokens": 64,
            "max_new_tokens": 16,
            "grammar_compile_timeout_s": 2.0,
            "max_schema_bytes": 8192,
        }
    )
    loop = asyncio.new_event_loop()
    engine = start_engine(settings)
    yield engine, loop
    loop.run_until_complete(engine.close())
    loop.close()


async def _timed(engine: Engine, request: GenerationRequest) -> tuple[str, float]:
    started = asyncio.get_running_loop().time()
    outcome: str
    try:
        outcome = (await engine.generate(request)).finish_reason
    except EngineError as exc:
        assert exc.type == ErrorType.VALIDATION, exc
        outcome = "refused"
    return outcome, asyncio.get_running_loop().time() - started


@pytest.mark.timeout(240)
@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fmt=hostile_formats)
def test_hostile_formats_are_refused_or_served_within_a_bound_while_others_run(
    hostile_engine: tuple[Engine, asyncio.AbstractEventLoop], fmt: dict[str, object]
) -> None:
    engine, loop = hostile_engine
    try:
        params = GenerationParams.model_validate({"max_new_tokens": 8, "response_format": fmt})
    except ValueError:
        event("refused at submission")
        return  # refused at submission (the protocol's caps): never reaches a replica
    hostile = GenerationRequest(adapter="s2", prompt="h", params=params)
    # A free job of another adapter, sent with it, answers as fast as ever.
    other = GenerationRequest(
        adapter="s3", prompt="other", params=GenerationParams(max_new_tokens=8)
    )

    async def both() -> tuple[tuple[str, float], tuple[str, float]]:
        return await asyncio.gather(_timed(engine, hostile), _timed(engine, other))

    (outcome, hostile_s), (other_outcome, other_s) = loop.run_until_complete(both())
    event(f"replica: {outcome}")
    assert hostile_s < BOUND_S, (fmt, hostile_s)
    assert other_outcome == "length" and other_s < BOUND_S / 2, other_s
