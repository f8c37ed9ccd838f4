"""A row's log-probabilities as the result records them: token ids given their text.

Both backends hand over the same numbers (the generated token's log-probability and the
likeliest tokens of its step, best first); this names each token by its text, decoded
alone (a token that is part of a character reads U+FFFD). Alternatives a row could not
take (masked by its response_format: log-probability -inf, which JSON cannot hold) are
left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from schemas.records import TokenLogprob, TopLogprob

# Per generated token: its log-probability, then the ids and log-probabilities of the
# likeliest tokens of its step.
Step = tuple[float, Sequence[int], Sequence[float]]


def token_logprobs(
    tokenizer: Any, token_ids: Sequence[int], steps: Sequence[Step]
) -> list[TokenLogprob]:
    """One entry per token of ``token_ids`` (``steps[i]`` is token ``i``'s)."""
    texts: dict[int, str] = {}

    def text(token_id: int) -> str:
        if token_id not in texts:
            texts[token_id] = str(tokenizer.decode([token_id]))
        return texts[token_id]

    return [
        TokenLogprob(
            token_id=token_id,
            token=text(token_id),
            logprob=chosen,
            top_logprobs=[
                TopLogprob(token_id=other, token=text(other), logprob=value)
                for other, value in zip(top_ids, top_values, strict=True)
                if math.isfinite(value)
            ],
        )
        for token_id, (chosen, top_ids, top_values) in zip(token_ids, steps, strict=True)
    ]
