"""The upload's bounds as pure logic: the streaming form reader and the JSONL line bounds."""

from __future__ import annotations

import pytest

from workers.gateway.batch_lines import LineRules, parse_lines
from workers.gateway.errors import ApiError
from workers.gateway.jsonl_bounds import LineBounds, LineLimitError, numbered_lines, slices
from workers.gateway.multipart import MAX_FILENAME_CHARS, MAX_FORM_PARTS, FormReader

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, value: bytes, *, filename: str | None = None, kind: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    head += f"Content-Type: {kind}\r\n" if kind else ""
    return head.encode() + b"\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def read(body: bytes, piece: int) -> tuple[FormReader, bytes]:
    received = bytearray()
    reader = FormReader.for_content_type(CONTENT_TYPE, received.extend)
    for start in range(0, len(body), piece):
        reader.feed(body[start : start + piece])
    reader.finish()
    return reader, bytes(received)


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 20])
def test_the_form_reads_the_same_whatever_pieces_it_arrives_in(piece: int) -> None:
    content = b'{"a": 1}\r\n--not-the-boundary\r\n' * 50
    body = form(part("purpose", b"batch"), part("file", content, filename="in.jsonl"))
    reader, received = read(body, piece)
    assert received == content
    assert reader.fields == {"purpose": b"batch"} and reader.filename == "in.jsonl"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (form(*[part(f"f{i}", b"x") for i in range(MAX_FORM_PARTS + 1)]), "more than 8 parts"),
        (
            form(part("file", b"a", filename="a.jsonl"), part("file2", b"b", filename="b.jsonl")),
            "more than one file",
        ),
        (
            form(part("file", b"--x--", filename="a", kind="multipart/mixed; boundary=x")),
            "nested",
        ),
        (form(part("file", b"a", filename="n" * (MAX_FILENAME_CHARS + 1))), "file name"),
        (form(part("purpose", b"b" * 2000)), "over 1024 bytes"),
        (form(part("purpose", b"batch"), part("purpose", b"batch")), "repeats"),
        (f"--{BOUNDARY}\r\n".encode() + b"x" * 10_000, "headers are over"),
    ],
)
def test_a_form_past_a_bound_is_refused_naming_it(body: bytes, words: str) -> None:
    with pytest.raises(ApiError) as caught:
        read(body, 4096)
    assert caught.value.status == 400 and words in caught.value.message


def test_a_form_that_stops_short_and_a_body_that_is_no_form_are_refused() -> None:
    with pytest.raises(ApiError, match="ends mid-form"):
        read(part("purpose", b"batch"), 64)
    with pytest.raises(ApiError, match="multipart/form-data"):
        FormReader.for_content_type("application/json", lambda data: None)


def test_line_bounds_stop_at_the_first_piece_past_the_line_count() -> None:
    bounds = LineBounds(max_lines=5)
    bounds.feed(b"{}\n\n  \n{}\n{")  # blank lines do not count; the last waits for its end
    bounds.feed(b"}\n{}\n{}")
    assert bounds.finish() == 5
    bounds = LineBounds(max_lines=5)
    with pytest.raises(LineLimitError, match="more than 5 lines"):
        for piece in slices(b"{}\n" * 1_000_000, 1024):
            bounds.feed(piece)
    assert bounds.lines < 5 + 1024


def test_line_bounds_refuse_a_long_line_even_before_it_ends() -> None:
    bounds = LineBounds(max_lines=10, max_line_bytes=100)
    bounds.feed(b"x" * 100)
    with pytest.raises(LineLimitError, match="longer than 100 bytes"):
        bounds.feed(b"x")


def test_numbered_lines_skip_blank_ones_and_keep_editor_numbers() -> None:
    assert list(numbered_lines(b"a\n\n b\n\n")) == [(1, b"a"), (3, b" b")]


@pytest.mark.parametrize("key", ["custom_id", "model"])
def test_a_batch_line_that_repeats_a_key_fails_naming_the_key(key: str) -> None:
    body = (
        '"body": {"model": "m", "model": "n", "prompt": "a"}'
        if key == "model"
        else ('"body": {"model": "m", "prompt": "a"}')
    )
    ids = '"custom_id": "a", "custom_id": "b"' if key == "custom_id" else '"custom_id": "a"'
    raw = f'{{{ids}, "method": "POST", "url": "/v1/completions", {body}}}'.encode()
    rules = LineRules("/v1/completions", "m", 16, -10, 0.0, 60)
    [parsed] = parse_lines(raw, "batch_x", rules)
    assert parsed.job is None and parsed.error is not None
    assert f"duplicate key '{key}'" in parsed.error.message
