"""The producer's Lua scripts (``schemas/lua/enqueue.lua``, ``cancel.lua``) and the
reading of their replies: each multi-key change runs as one atomic script.

All keys go in ``KEYS`` so that a prefix in braces keeps them in one Redis Cluster slot.
"""

from __future__ import annotations

from schemas.codec import as_text
from schemas.records import JobStatus, can_transition
from schemas.scripts import script_source

ENQUEUE = script_source("enqueue")
CANCEL = script_source("cancel")


def cancel_args(owner: str | None = None) -> list[str]:
    """ARGV of :data:`CANCEL`: ``owner`` is the record's ``owner`` it must match."""
    return [owner or ""]


def cancel_took_effect(reply: str | bytes) -> bool:
    """Whether :data:`CANCEL` found a job that exists and could still be cancelled (one
    element of its reply)."""
    return as_text(reply) != "" and can_transition(JobStatus(as_text(reply)), JobStatus.CANCELLED)
