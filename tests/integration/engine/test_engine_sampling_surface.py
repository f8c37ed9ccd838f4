"""Log-probabilities and penalties inside shared mixed-adapter batches, against PEFT's model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import torch
from engine_kit import Kit, request
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

from workers.engine.engine import Engine
from workers.engine.requests import GenerationOutput, TextDelta

Oracle = Callable[[str | None], torch.nn.Module]
TOLERANCE = 1e-4


class PresenceFrequency(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the generated tokens, one by one."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()  # type: ignore[assignment]
        for token in set(input_ids[0, self.prompt_length :].tolist()):
            count = int((input_ids[0, self.prompt_length :] == token).sum())
            scores[0, token] -= self.presence + self.frequency * count
        return scores


async def test_logprobs_and_penalties_in_one_mixed_batch(
    engine: Engine, kit: Kit, oracle_model: Oracle
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(kit.base)
    jobs = [
        request("a", "logprobs please", 20, logprobs=True, top_logprobs=5),
        request(None, "the base model", 14, logprobs=True),
        request("b", "a sampled neighbour", 16, temperature=1.0, seed=3, min_p=0.1),
        request("c", "repeat repeat repeat", 24, repetition_penalty=1.6),
        request("d", "present and frequent", 24, presence_penalty=1.2, frequency_penalty=0.6),
    ]
    outputs: list[GenerationOutput] = await asyncio.gather(*map(engine.generate, jobs))

    # Greedy rows: each token's log-probability is log_softmax of the model's logits at
    # its position (PEFT's own forward over prompt and output), the top 5 its best 5.
    for job, out in zip(jobs[:2], outputs[:2], strict=True):
        assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids) > 0
        prompt = tokenizer(job.prompt)["input_ids"]
        with torch.inference_mode():
            logits = oracle_model(job.adapter)(torch.tensor([prompt + out.token_ids])).logits
        expected = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        got = torch.tensor([entry.logprob for entry in out.logprobs])
        chosen = expected.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
        assert torch.allclose(got, chosen, rtol=0, atol=TOLERANCE)
        for entry, row in zip(out.logprobs, expected, strict=True):
            wanted = job.params.top_logprobs or 0
            best = row.topk(wanted)
            assert [top.token_id for top in entry.top_logprobs] == best.indices.tolist()
            values = torch.tensor([top.logprob for top in entry.top_logprobs])
            assert torch.allclose(values, best.values, rtol=0, atol=TOLERANCE)
            assert entry.token == tokenizer.decode([entry.token_id])
            # Greedy: the token taken is the likeliest one.
            assert entry.logprob >= row.max().item() - TOLERANCE
    assert outputs[2].logprobs is None

    # Penalized greedy rows: the same tokens as transformers' generate with the same
    # penalties (its repetition penalty is vLLM's; presence and frequency one by one).
    for job, out, processors in [
        (jobs[3], outputs[3], LogitsProcessorList()),
        (jobs[4], outputs[4], None),
    ]:
        prompt = tokenizer(job.prompt, return_tensors="pt")
        length = prompt["input_ids"].shape[1]
        if processors is None:
            processors = LogitsProcessorList([PresenceFrequency(length, 1.2, 0.6)])
        with torch.inference_mode():
            generated = oracle_model(job.adapter).generate(
                **prompt,
                max_new_tokens=job.params.max_new_tokens,
                do_sample=False,
                repetition_penalty=job.params.repetition_penalty,
                logits_processor=processors,
            )
        assert out.token_ids == generated[0, length:].tolist(), job.adapter
        free = await engine.generate(request(job.adapter, job.prompt or "", 24))
        assert free.token_ids != out.token_ids  # the penalties changed the text


async def test_streamed_deltas_carry_the_logprobs_of_their_tokens(engine: Engine) -> None:
    wanted = {"logprobs": True, "top_logprobs": 3}
    whole = await engine.generate(request("a", "stream my logprobs", 20, **wanted))
    assert whole.logprobs is not None and len(whole.text) > 6
    # A stop string inside the text: its tokens' text is held back, then dropped.
    stop = whole.text[4:6]
    for job in (
        request("a", "stream my logprobs", 20, **wanted),
        request("a", "stream my logprobs", 20, stop=[stop], **wanted),
        request("b", "stream my logprobs", 20),  # none asked, none carried
    ):
        alone = await engine.generate(job)
        items = [item async for item in engine.stream(job)]
        *deltas, output = items
        assert isinstance(output, GenerationOutput)
        assert (output.token_ids, output.logprobs) == (alone.token_ids, alone.logprobs)
        assert all(isinstance(d, TextDelta) for d in deltas)
        carried = [d.logprobs for d in deltas if isinstance(d, TextDelta)]
        if output.logprobs is None:
            assert carried == [None] * len(deltas)
            continue
        streamed = [entry for entries in carried for entry in entries or []]
        # In order, each token once; only those after the last text (the end of text,
        # or the stop string's tokens) come with the output alone.
        assert deltas and streamed == output.logprobs[: len(streamed)]
        if not job.params.stop:
            assert len(output.logprobs) - len(streamed) <= 1
