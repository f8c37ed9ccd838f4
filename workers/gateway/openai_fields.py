"""Which OpenAI request fields loraq takes beyond the ones it honours: only harmless ones.

A field the request models declare is honoured. Of the rest, the few in :data:`DROPPED`
change nothing a client reads back (who the user is, what to store, caching and billing
hints) and are dropped; every other field answers 400 naming it, so that a client never
believes ``tools``, ``logit_bias`` or a typo shaped an answer that ignored them.
docs/HTTP.md lists every field of OpenAI's requests as honoured, refused or dropped.
"""

from __future__ import annotations

from pydantic import BaseModel

from workers.gateway.errors import ApiError

# Top-level fields of a completion or chat request, dropped unread.
DROPPED = frozenset(
    {
        "user",
        "safety_identifier",
        "store",
        "metadata",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
# Fields of a chat message, dropped unread: a participant's name, which chat templates
# mostly do not render.
DROPPED_MESSAGE_FIELDS = frozenset({"name"})


def refuse_unhonoured(body: BaseModel) -> None:
    """400 ``validation`` naming the fields of ``body`` (and of its ``messages``) that
    loraq neither honours nor drops; ``null`` counts as absent, as in OpenAI's API."""
    refused = _unhonoured(body, DROPPED, "")
    for index, message in enumerate(getattr(body, "messages", None) or []):
        refused += _unhonoured(message, DROPPED_MESSAGE_FIELDS, f"messages[{index}].")
    if refused:
        names = ", ".join(refused)
        raise ApiError(
            400,
            "validation",
            f"not supported by loraq: {names} (sent, it would be ignored; "
            "docs/HTTP.md lists the fields loraq honours)",
        )


def _unhonoured(model: BaseModel, dropped: frozenset[str], prefix: str) -> list[str]:
    extra = model.model_extra or {}
    return [
        prefix + name for name, value in extra.items() if value is not None and name not in dropped
    ]
