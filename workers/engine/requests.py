"""What the engine takes and gives back; plain data that crosses Ray process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas import GenerationParams, Job, Message
from schemas.records import TokenLogprob
from workers.adapters.resolved import ResolvedAdapter
from workers.errors import EngineError

__all__ = ["EngineError", "GenerationOutput", "GenerationRequest", "TextDelta"]


@dataclass
class GenerationRequest:
    """One row of generation: an adapter (``None`` = base model) and a prompt or messages."""

    adapter: str | None
    prompt: str | None = None
    messages: list[Message] | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    request_id: str | None = None
    # The model replica the consumer's scheduler chose (None: the router chooses).
    target_replica: str | None = None
    # Set by the model replica from ``adapter`` (the catalogue's answer): what a backend
    # reads, never the name.
    resolved: ResolvedAdapter | None = None

    @classmethod
    def from_job(
        cls, job: Job, request_id: str | None = None, *, target_replica: str | None = None
    ) -> GenerationRequest:
        """The request that runs ``job`` (on ``target_replica``, when one was chosen)."""
        return cls(
            adapter=job.adapter_name,
            prompt=job.prompt,
            messages=job.messages,
            params=job.params,
            request_id=request_id or job.id,
            target_replica=target_replica,
        )


@dataclass
class TextDelta:
    """New text of a row, handed out while it generates."""

    text: str
    # When the request's params asked for them: the entries of the tokens generated
    # since the previous delta (their text is this delta's, or was held back, as a stop
    # string's start is). The output's ``logprobs`` holds every entry, these included.
    logprobs: list[TokenLogprob] | None = None

    def then(self, following: TextDelta) -> TextDelta:
        """This delta and ``following`` as one."""
        if self.logprobs is None and following.logprobs is None:
            return TextDelta(self.text + following.text)
        entries = [*(self.logprobs or []), *(following.logprobs or [])]
        return TextDelta(self.text + following.text, entries)


@dataclass
class GenerationOutput:
    """The finished row."""

    text: str
    finish_reason: Literal["stop", "length", "cancelled"]
    prompt_tokens: int
    completion_tokens: int
    adapter: str | None
    generation_ms: float = 0.0
    adapter_version: str | None = None
    replica: str | None = None
    token_ids: list[int] = field(default_factory=list)
    # One per token of ``token_ids``, when the request's params asked for them.
    logprobs: list[TokenLogprob] | None = None
    # The replica's device adapters when the row ended (set by LoRAModel).
    device_adapters: list[str] | None = None
