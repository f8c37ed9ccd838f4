"""The duplicate-key check of every JSON loraq reads: the C scanner's fast path answers as
the token scan does, whatever the text, the nesting or the caller's stack."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import validation
from schemas.validation import InvalidJob, check_unique_keys

KEYS = st.sampled_from(["a", "b", "c", "é", 'q"t', "back\\slash", "", "custom_id"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))


def texts() -> st.SearchStrategy[str]:
    """JSON texts whose objects may repeat a key (written as text: a dict cannot)."""

    def obj(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        pair = st.tuples(KEYS, children).map(lambda kv: f"{json.dumps(kv[0])}: {kv[1]}")
        return st.lists(pair, max_size=4).map(lambda pairs: "{" + ", ".join(pairs) + "}")

    def arr(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.lists(children, max_size=3).map(lambda items: "[" + ",".join(items) + "]")

    scalar = SCALARS.map(json.dumps)
    return st.recursive(scalar, lambda c: st.one_of(obj(c), arr(c)), max_leaves=20)


def scan_answer(text: str) -> str | None:
    """The token scan's answer alone (the fast path off): its message, or None."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validation, "_FAST_BRACKETS", -1)
        return answer(text)


def answer(text: str) -> str | None:
    try:
        check_unique_keys(text)
    except InvalidJob as exc:
        return str(exc)
    return None


@settings(max_examples=300, deadline=None)
@given(texts())
def test_the_fast_path_answers_as_the_scan(text: str) -> None:
    assert answer(text) == scan_answer(text)


def test_a_repeated_key_is_named_in_reading_order_on_either_path() -> None:
    text = '{"x": {"c": 1, "c": 2}, "x": 3}'
    assert scan_answer(text) == answer(text)
    assert "duplicate key 'c'" in (answer(text) or "")


def test_deep_texts_and_deep_callers_get_the_scans_answer() -> None:
    deep = "[" * 1000 + '{"k": 1, "k": 2}' + "]" * 1000
    assert "duplicate key 'k'" in (answer(deep) or "")
    shallow = '{"a": {"b": 1, "b": 2}}'

    def at_depth(levels: int) -> Any:
        return answer(shallow) if levels == 0 else at_depth(levels - 1)

    # Close to the recursion limit, the C scanner's recursion fails: the scan answers.
    limit, answered = sys.getrecursionlimit(), 0
    for depth in range(limit - 80, limit, 5):
        try:
            got = at_depth(depth)
        except RecursionError:
            continue  # this test's own frames ran out first
        assert got is not None and "duplicate key 'b'" in got
        answered += 1
    assert answered >= 5


def test_a_text_without_repeats_passes_both_paths() -> None:
    check_unique_keys(b'{"prompt": "hi", "params": {"max_new_tokens": 4}, "tags": [{"a": 1}]}')
