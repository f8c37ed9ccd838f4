"""params.response_format: the checks a producer runs before a job is sent (pure)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import GenerationParams
from schemas.response_format import (
    MAX_ENUM_VALUES,
    MAX_SCHEMA_DEPTH,
    ChoiceFormat,
    constraint,
    format_digest,
)


def params(fmt: dict[str, Any]) -> GenerationParams:
    return GenerationParams.model_validate({"response_format": fmt})


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def refusal(fmt: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        params(fmt)
    return str(caught.value)


def test_openai_shapes_and_loraq_ones_parse() -> None:
    assert constraint(params({"type": "text"}).response_format) is None
    assert constraint(GenerationParams().response_format) is None
    assert params({"type": "json_object"}).response_format is not None
    fmt = params({"type": "choice", "choices": ["a", "b"]}).response_format
    assert isinstance(fmt, ChoiceFormat) and fmt.choices == ["a", "b"]
    strict = schema_format({"type": "object", "title": "T", "additionalProperties": False})
    strict["json_schema"]["strict"] = True
    dumped = params(strict).model_dump(mode="json", exclude_none=True)
    assert dumped["response_format"] == strict  # the wire keeps OpenAI's "schema" name


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "object", "not": {}}, "unsupported keyword 'not' at #"),
        ({"properties": {"a": {"patternProperties": {}}}}, "'patternProperties' at #/properties/a"),
        ({"type": "number", "multipleOf": 2}, "'multipleOf'"),
        ({"type": "strin"}, "unknown type 'strin'"),
        ({"type": "string", "format": "colour"}, "unsupported format 'colour'"),
        ({"$ref": "https://example.com/s.json"}, "not a local reference"),
        ({"type": "array", "maxItems": 10**6}, "'maxItems' at # is 1000000"),
        ({"type": "string", "pattern": "a{5000}"}, "repeats 5000 times"),
        ({"anyOf": []}, "'anyOf' at # is not a non-empty array"),
        ({"properties": {"a": 3}}, "#/properties/a is not an object or a boolean"),
    ],
)
def test_bad_schemas_are_refused_naming_the_problem(schema: dict[str, Any], named: str) -> None:
    assert named in refusal(schema_format(schema))


def test_size_nesting_and_enum_caps() -> None:
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(MAX_SCHEMA_DEPTH + 1):
        deep = {"type": "array", "items": deep}
    assert "deeper than" in refusal(schema_format(deep))
    many = {"enum": list(range(MAX_ENUM_VALUES + 1))}
    assert "enum values" in refusal(schema_format(many))
    big = {"description": "x" * 70_000}
    assert "bytes as JSON" in refusal(schema_format(big))
    assert "repeats" in refusal({"type": "regex", "pattern": "(ab){1,2000}"})
    assert params({"type": "regex", "pattern": "a\\{5000}"})  # an escaped brace is a literal
    nested = refusal({"type": "regex", "pattern": "(x(a{1,30}|b)){1,40}"})
    assert "repeats 1200 times ({1,30}, counts of nested groups multiplied)" in nested
    assert params({"type": "regex", "pattern": "(ab|cd){500}x{500}[(]{900}"})


def test_equal_formats_share_a_digest() -> None:
    one = params(schema_format({"type": "object", "required": ["a"]})).response_format
    two = params(schema_format({"required": ["a"], "type": "object"})).response_format
    other = params(schema_format({"type": "object"})).response_format
    assert one is not None and two is not None and other is not None
    found = [constraint(f) for f in (one, two, other)]
    assert all(f is not None for f in found)
    digests = [format_digest(f) for f in found if f is not None]
    assert digests[0] == digests[1] != digests[2]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "properties", "items", "enum", "format", "required", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@given(
    schema=st.dictionaries(
        st.sampled_from(
            [
                "type",
                "properties",
                "items",
                "enum",
                "format",
                "required",
                "anyOf",
                "$ref",
                "maxItems",
                "pattern",
            ]
        ),
        json_values,
        max_size=5,
    )
)
def test_any_json_as_a_schema_is_accepted_or_refused_never_an_error(schema: dict[str, Any]) -> None:
    with contextlib.suppress(ValidationError):  # a refusal is fine; any other error is not
        params(schema_format(schema))
