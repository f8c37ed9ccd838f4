"""What the final write completes a job's events stream with."""

from __future__ import annotations

from workers.queue.runner import InFlight


def test_the_final_text_is_passed_when_it_continues_the_streamed_text() -> None:
    slot = InFlight("1-0")
    slot.start(1)
    slot.text += ["HEL", "LO"]
    assert slot.final_text("HELLO WORLD") == "HELLO WORLD"
    assert slot.final_text("HELLO") == "HELLO"
    # A result that is not the streamed text continued (never expected): nothing to add.
    assert slot.final_text("GOODBYE") == ""


def test_a_new_start_forgets_the_old_text() -> None:
    slot = InFlight("1-0")
    slot.start(1)
    slot.text += ["HEL", "LO"]
    slot.streamed_pieces, slot.streamed_bytes = 1, 3
    assert slot.unstreamed == ["LO"]
    slot.streaming = False
    assert slot.final_text("HELLO") == "HELLO"
    slot.start(2)
    assert (slot.attempt, slot.streaming, slot.streamed_pieces, slot.streamed_bytes) == (
        2,
        True,
        0,
        0,
    )
    assert slot.text == slot.unstreamed == []
    assert slot.final_text("HELLO") == "HELLO"
