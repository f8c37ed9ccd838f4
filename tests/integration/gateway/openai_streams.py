"""Checks of streamed OpenAI responses shared by both backends' tests: a stream's
log-probabilities and its ``n`` choices against the unstreamed answers
(tests/integration/gateway/test_gateway_openai.py on the HF engine,
tests/integration/vllm/test_vllm_openai.py on vLLM)."""

from __future__ import annotations

from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk
from openai.types.completion import Completion


def streamed_chat_logprobs_match(
    client: openai.OpenAI, model: str, content: str
) -> list[ChatCompletionChunk]:
    """A greedy chat's streamed ``logprobs.content`` joins into the unstreamed list, and
    each text chunk carries its own tokens' entries; the chunks, for more checks.

    The answer to ``content`` must hold no special token before its end: the text leaves
    one out, its log-probability entry names it.
    """
    messages: Any = [{"role": "user", "content": content}]
    asked: Any = {"model": model, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    whole = client.chat.completions.create(messages=messages, **asked)
    expected = whole.choices[0].logprobs
    assert expected is not None and expected.content
    chunks = list(client.chat.completions.create(messages=messages, stream=True, **asked))
    streamed = [
        token
        for chunk in chunks
        for choice in chunk.choices
        if choice.logprobs is not None
        for token in choice.logprobs.content or []
    ]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in expected.content]
    # Every chunk's (text, its entries' tokens), for the message of a failure.
    pieces = [
        (choice.delta.content, [t.token for t in choice.logprobs.content or []])
        for chunk in chunks
        for choice in chunk.choices[:1]
        if choice.logprobs is not None
    ]
    for chunk in chunks:
        choice = chunk.choices[0]
        if choice.delta.content:
            assert choice.logprobs is not None and choice.logprobs.content, pieces
            tokens = "".join(t.token for t in choice.logprobs.content)
            assert tokens == choice.delta.content, pieces
    return chunks


def streamed_completion_logprobs_match(client: openai.OpenAI, model: str, prompt: str) -> None:
    """A greedy completion's streamed ``logprobs`` fields join into the unstreamed ones."""
    asked = {"model": model, "prompt": prompt, "temperature": 0, "logprobs": 2}
    plain = client.completions.create(**asked).choices[0].logprobs
    assert plain is not None and plain.tokens
    parts = [
        c.choices[0].logprobs
        for c in client.completions.create(stream=True, **asked)
        if c.choices and c.choices[0].logprobs
    ]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for part in parts for v in getattr(part, key) or []] == getattr(plain, key)


def streamed_n_completions_match(client: openai.OpenAI, sampled: dict[str, Any]) -> None:
    """``n=3`` streamed with a seed: each choice (one per chunk, tagged with its index,
    ending with its own finish reason) is the single run of seed + index, and the usage
    chunk sums the three."""
    replies: list[Completion] = [
        client.completions.create(prompt="abc def", seed=41 + i, **sampled) for i in range(3)
    ]
    chunks = list(
        client.completions.create(
            prompt="abc def",
            n=3,
            seed=41,
            stream=True,
            stream_options={"include_usage": True},
            **sampled,
        )
    )
    texts: dict[int, str] = {}
    for i, reply in enumerate(replies):
        mine = [c.choices[0] for c in chunks[:-1] if c.choices[0].index == i]
        texts[i] = "".join(choice.text for choice in mine)
        assert texts[i] == reply.choices[0].text
        assert [choice.finish_reason for choice in mine][-1] == reply.choices[0].finish_reason
        assert all(choice.finish_reason is None for choice in mine[:-1])
    assert all(len(c.choices) == 1 for c in chunks[:-1])
    assert len(set(texts.values())) > 1
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == sum(r.usage.completion_tokens for r in replies if r.usage)
    assert usage.prompt_tokens == sum(r.usage.prompt_tokens for r in replies if r.usage)
