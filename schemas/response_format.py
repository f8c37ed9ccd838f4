"""``params.response_format``: what shape the generated text must have (protocol v1.4).

OpenAI's shapes (``text``, ``json_object``, ``json_schema``) plus loraq's ``regex`` and
``choice``. Everything a producer can check without the model's tokenizer is checked here,
so that a bad format is refused at submission: the JSON Schema's structure and keywords
(only those the engines enforce: a keyword a grammar would silently skip is refused, since
the client would believe its output was held to it), its size, nesting and enum counts,
and the repetition counts of regular expressions. The engines check the rest (the
replica's byte cap, and compiling against their tokenizer, bounded in time).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator
from typing_extensions import Self

# Hard caps of the protocol; a replica's LORAQ_MAX_SCHEMA_BYTES may set a lower one.
MAX_SCHEMA_BYTES = 65_536
MAX_SCHEMA_DEPTH = 16
MAX_ENUM_VALUES = 1_000  # over the whole schema (enum members and consts)
MAX_PROPERTIES = 1_000  # over the whole schema
MAX_PATTERN_CHARS = 4_096
MAX_REPEAT = 1_000  # the largest n of a regex's {n}, {n,} or {n,m}
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 256

SCHEMA_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# The keywords the grammar engines enforce (xgrammar and vLLM's backends), and those that
# change nothing about the text (annotations). Anything else is refused.
SUBSCHEMA_LIST_KEYWORDS = frozenset({"anyOf", "oneOf", "prefixItems"})
SUBSCHEMA_MAP_KEYWORDS = frozenset({"properties", "$defs", "definitions"})
SUBSCHEMA_KEYWORDS = frozenset({"items", "additionalProperties"})
VALUE_KEYWORDS = frozenset(
    {
        "type",
        "required",
        "enum",
        "const",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "$ref",
    }
)
ANNOTATION_KEYWORDS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "strict"}
)
SUPPORTED_KEYWORDS = (
    SUBSCHEMA_LIST_KEYWORDS
    | SUBSCHEMA_MAP_KEYWORDS
    | SUBSCHEMA_KEYWORDS
    | VALUE_KEYWORDS
    | ANNOTATION_KEYWORDS
)
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
# String formats the grammars hold a string to; an unknown one would be skipped silently.
FORMATS = frozenset(
    {"date", "time", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"}
)
# {n}, {n,} and {n,m} of a regular expression (an escaped brace is a literal: skipped).
_REPEAT = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")


class TextFormat(BaseModel):
    """Free text (the default)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    """Any JSON object."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    """A named JSON Schema, as OpenAI's ``response_format.json_schema`` carries it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: Annotated[str, StringConstraints(pattern=SCHEMA_NAME_PATTERN)]
    description: str | None = Field(None, max_length=4096)
    schema_: dict[str, JsonValue] = Field(
        alias="schema",
        description=f"A JSON Schema; only the keywords the engines enforce (docs/PROTOCOL.md), "
        f"at most {MAX_SCHEMA_BYTES} bytes as JSON and {MAX_SCHEMA_DEPTH} levels deep.",
    )
    strict: bool | None = Field(
        None, description="Accepted for OpenAI's clients: loraq always holds output to the schema."
    )

    @model_validator(mode="after")
    def _checked(self) -> Self:
        check_schema(self.schema_)
        return self


class JsonSchemaFormat(BaseModel):
    """JSON that validates against a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class RegexFormat(BaseModel):
    """Text that matches a regular expression entirely (no lookaround, no backreferences)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["regex"]
    pattern: str = Field(min_length=1, max_length=MAX_PATTERN_CHARS)

    @model_validator(mode="after")
    def _checked(self) -> Self:
        check_pattern(self.pattern)
        return self


class ChoiceFormat(BaseModel):
    """Exactly one of a few strings (a label)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["choice"]
    choices: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_CHOICE_CHARS)]] = (
        Field(min_length=1, max_length=MAX_CHOICES)
    )


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat | RegexFormat | ChoiceFormat,
    Field(discriminator="type"),
]
# The formats that constrain the text (all but ``text``).
Constraint = JsonObjectFormat | JsonSchemaFormat | RegexFormat | ChoiceFormat


def constraint(fmt: object) -> Constraint | None:
    """The constraint of a ``response_format`` (``None``: free text)."""
    if isinstance(fmt, JsonObjectFormat | JsonSchemaFormat | RegexFormat | ChoiceFormat):
        return fmt
    return None


def format_json(fmt: Constraint) -> bytes:
    """``fmt`` as canonical JSON (sorted keys): what its size and digest are of."""
    return orjson.dumps(fmt.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)


def format_digest(fmt: Constraint) -> str:
    """The key of ``fmt``'s compiled grammar: equal formats share one."""
    return hashlib.sha256(format_json(fmt)).hexdigest()


def check_pattern(pattern: str) -> None:
    """``ValueError`` for a regular expression whose grammar would be huge: a repetition
    count over :data:`MAX_REPEAT`, also as the product of nested ones: xgrammar had not
    compiled ``(a{1,1000}){1,1000}`` after two minutes (a loaded machine), and a compile
    cannot be stopped once started."""
    counts = [(m.start(), m.end(), _bound(m)) for m in _REPEAT.finditer(pattern)]
    # A count right after a group's ")" repeats the whole group.
    groups = [
        (start, end, bound)
        for start, end in _groups(pattern)
        for at, _, bound in counts
        if at == end + 1
    ]
    for at, end, bound in counts:
        product = bound
        for open_at, close_at, outer in groups:
            if open_at < at < close_at:
                product *= outer
        if product > MAX_REPEAT:
            nested = ", counts of nested groups multiplied" if product != bound else ""
            raise ValueError(
                f"pattern repeats {product} times ({pattern[at:end]}{nested}): at most {MAX_REPEAT}"
            )


def _bound(match: re.Match[str]) -> int:
    """The most times ``{n}``, ``{n,}`` or ``{n,m}`` repeats (``{n,}``: n, the grammar's
    size)."""
    low, high = match.groups()
    return int(high) if high else int(low)


def _groups(pattern: str) -> list[tuple[int, int]]:
    """The (open, close) positions of the parenthesised groups of ``pattern``."""
    groups: list[tuple[int, int]] = []
    opened: list[int] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 1  # the escaped character is a literal
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            opened.append(index)
        elif char == ")" and opened:
            groups.append((opened.pop(), index))
        index += 1
    return groups


def check_schema(schema: dict[str, Any]) -> None:
    """``ValueError`` naming the problem when ``schema`` is not a JSON Schema the engines
    enforce whole, or is too big."""
    try:
        size = len(orjson.dumps(schema))
    except orjson.JSONEncodeError as exc:  # nested past orjson's depth limit
        raise ValueError(f"schema cannot be written as JSON: {exc}") from None
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"schema is {size} bytes as JSON: at most {MAX_SCHEMA_BYTES}")
    enums = properties = 0
    for path, node, depth in _subschemas(schema, "#", 0):
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(f"schema nests deeper than {MAX_SCHEMA_DEPTH} levels at {path}")
        unknown = sorted(set(node) - SUPPORTED_KEYWORDS)
        if unknown:
            raise ValueError(f"unsupported keyword {unknown[0]!r} at {path}")
        _check_values(path, node)
        enums += len(node.get("enum", [])) + ("const" in node)
        properties += len(node.get("properties", {}))
    if enums > MAX_ENUM_VALUES:
        raise ValueError(f"schema has {enums} enum values: at most {MAX_ENUM_VALUES}")
    if properties > MAX_PROPERTIES:
        raise ValueError(f"schema has {properties} properties: at most {MAX_PROPERTIES}")


def _subschemas(node: object, path: str, depth: int) -> Iterator[tuple[str, dict[str, Any], int]]:
    """Every subschema of ``node`` with its JSON pointer and depth, ``node`` first."""
    if isinstance(node, bool):  # true / false are schemas too
        return
    if not isinstance(node, dict):
        raise ValueError(f"schema at {path} is not an object or a boolean")
    yield path, node, depth
    if depth > MAX_SCHEMA_DEPTH:
        return  # the caller refuses it; walking further would only recurse deeper
    for keyword in SUBSCHEMA_KEYWORDS & node.keys():
        yield from _subschemas(node[keyword], f"{path}/{keyword}", depth + 1)
    for keyword in SUBSCHEMA_LIST_KEYWORDS & node.keys():
        members = node[keyword]
        if not isinstance(members, list) or not members:
            raise ValueError(f"{keyword!r} at {path} is not a non-empty array")
        for index, member in enumerate(members):
            yield from _subschemas(member, f"{path}/{keyword}/{index}", depth + 1)
    for keyword in SUBSCHEMA_MAP_KEYWORDS & node.keys():
        for name, member in node[keyword].items():  # objects: checked with the node
            yield from _subschemas(member, f"{path}/{keyword}/{name}", depth + 1)


def _check_values(path: str, node: dict[str, Any]) -> None:
    for keyword in SUBSCHEMA_MAP_KEYWORDS & node.keys():
        if not isinstance(node[keyword], dict):
            raise ValueError(f"{keyword!r} at {path} is not an object")
    types = node.get("type", [])
    for name in types if isinstance(types, list) else [types]:
        if not isinstance(name, str) or name not in TYPES:
            raise ValueError(f"unknown type {name!r} at {path}")
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError(f"'required' at {path} is not an array of strings")
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise ValueError(f"'enum' at {path} is not a non-empty array")
    _check_strings(path, node)


def _check_strings(path: str, node: dict[str, Any]) -> None:
    """The string-valued keywords and the repetition counts of ``node``."""
    if "format" in node and not (isinstance(node["format"], str) and node["format"] in FORMATS):
        raise ValueError(f"unsupported format {node['format']!r} at {path}")
    if "pattern" in node:
        if not isinstance(node["pattern"], str):
            raise ValueError(f"'pattern' at {path} is not a string")
        check_pattern(node["pattern"])
    if "$ref" in node and not (isinstance(node["$ref"], str) and node["$ref"].startswith("#")):
        raise ValueError(f"'$ref' at {path} is not a local reference (#/...)")
    for keyword in ("minItems", "maxItems", "minLength", "maxLength"):
        value = node.get(keyword, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{keyword!r} at {path} is not a non-negative integer")
        if value > MAX_REPEAT:
            raise ValueError(f"{keyword!r} at {path} is {value}: at most {MAX_REPEAT}")
