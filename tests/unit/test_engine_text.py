"""Stop strings and streamed text of a row (pure string logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.engine.stopping import TextTracker


def feed(tracker: TextTracker, text: str) -> list[str]:
    """Grow the text one character at a time, as a decode loop would."""
    return [tracker.update(char) for char in text]


def test_text_streams_as_it_grows() -> None:
    tracker = TextTracker()
    assert feed(tracker, "abc") == ["a", "b", "c"]
    assert tracker.flush() == "" and not tracker.stopped


def test_a_stop_string_ends_the_text_before_it() -> None:
    tracker = TextTracker(stops=["END"])
    deltas = feed(tracker, "hello END more")[: len("hello END")]
    assert tracker.stopped
    assert tracker.text == "hello "
    assert "".join(deltas) == "hello "


def test_a_possible_stop_prefix_is_held_back_then_released() -> None:
    tracker = TextTracker(stops=["STOP"])
    assert tracker.update("ab ST") == "ab "
    assert tracker.update("A") == "STA"
    assert not tracker.stopped


def test_held_back_text_comes_out_at_the_end() -> None:
    tracker = TextTracker(stops=["xyz"])
    assert tracker.update("abx") == "ab"
    assert tracker.flush() == "x"
    assert tracker.text == "abx"


def test_the_earliest_of_several_stops_wins() -> None:
    tracker = TextTracker(stops=["cd", "b"])
    tracker.update("abcd")
    assert tracker.text == "a" and tracker.stopped


def test_a_stop_string_spanning_pieces_is_found() -> None:
    tracker = TextTracker(stops=["STOP"])
    assert [tracker.update(p) for p in ["xS", "T", "OPy"]] == ["x", "", ""]
    assert tracker.stopped and tracker.text == "x"


@given(
    text=st.text(alphabet="abcST", max_size=40),
    stops=st.lists(st.text(alphabet="abcST", min_size=1, max_size=4), max_size=3),
)
def test_streamed_text_is_always_the_final_text(text: str, stops: list[str]) -> None:
    tracker = TextTracker(stops=stops)
    streamed = ""
    for end in range(len(text)):
        streamed += tracker.update(text[end])
        if tracker.stopped:
            break
    streamed += tracker.flush()
    assert streamed == tracker.text
    assert not any(stop in tracker.text for stop in stops)
    # The text ends before the first stop string to be completed as the text grows.
    ends = [end for end in range(len(text) + 1) if any(s in text[:end] for s in stops)]
    seen = text[: ends[0]] if ends else text
    cut = min((seen.find(s) for s in stops if s in seen), default=len(seen))
    assert tracker.text == seen[:cut]
