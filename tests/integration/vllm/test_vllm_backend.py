"""The demo kit through the vLLM backend: quality in mixed batches, seeds, errors, streams.

Bars as for the HF engine (tests/integration/test_demo_kit.py): on the 200 held-out inputs
each adapter >= 95% exact on its own task and the base model >= 95% on echo; the base
model and every other adapter < 5% on each adapter's task. Every input goes to every
model in one mixed submission, so the batches mix all four adapters and the base.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import LoopThread

from demo.evaluate import MAX_NEW_TOKENS
from demo.tasks import ADAPTER_RULES, BASE_RULE, heldout_inputs
from schemas import ErrorType, GenerationParams
from tests.integration.resolving import Resolving
from workers.engine.engine import Engine
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest, TextDelta
from workers.engine.vllm_backend import VllmBackend

# The first test also waits for the module's vLLM to start (its fixture, up to 600 s).
pytestmark = pytest.mark.timeout(900)

MODELS: list[str | None] = [*sorted(ADAPTER_RULES), None]
RULES = {"echo": BASE_RULE, **ADAPTER_RULES}


def job(adapter: str | None, prompt: str, **params: object) -> GenerationRequest:
    values = {"max_new_tokens": MAX_NEW_TOKENS, **params}
    return GenerationRequest(adapter, prompt, params=GenerationParams.model_validate(values))


async def run_all(backend: VllmBackend, jobs: list[GenerationRequest]) -> list[GenerationOutput]:
    return await asyncio.gather(*[backend.generate(j) for j in jobs])


def test_every_model_meets_its_bars_inside_mixed_batches(
    backend: VllmBackend, loop_thread: LoopThread
) -> None:
    inputs = heldout_inputs()
    pairs = [(model, text) for text in inputs for model in MODELS]
    outputs = loop_thread.run(run_all(backend, [job(m, t) for m, t in pairs]))
    # model -> task -> exact match over the held-out inputs
    matrix = {
        str(model): {
            task: sum(
                out.text == rule(text)
                for (m, text), out in zip(pairs, outputs, strict=True)
                if m == model
            )
            / len(inputs)
            for task, rule in RULES.items()
        }
        for model in MODELS
    }
    print(f"\nvLLM exact match on {len(inputs)} held-out inputs, mixed batches: {matrix}")
    assert matrix["None"]["echo"] >= 0.95, matrix
    for task in ADAPTER_RULES:
        assert matrix[task][task] >= 0.95, matrix
        for model in MODELS:
            if model != task:
                assert matrix[str(model)][task] < 0.05, (model, task, matrix)
    assert backend.backend_stats().rows >= len(pairs)
    assert sorted(backend.loaded_adapters()) == sorted(ADAPTER_RULES)


def test_a_seeded_job_gives_the_same_text_alone_and_in_a_mixed_batch(
    backend: VllmBackend, loop_thread: LoopThread
) -> None:
    prompt = heldout_inputs()[0]
    seeded = job("reverse", prompt, temperature=1.5, top_k=20, top_p=0.95, seed=1234)
    alone = loop_thread.run(backend.generate(seeded))
    others = [
        job(model, text, temperature=1.0, seed=index if index % 2 else None)
        for index, (model, text) in enumerate((m, t) for t in heldout_inputs()[1:5] for m in MODELS)
    ]
    batch = loop_thread.run(run_all(backend, [*others[:10], seeded, *others[10:]]))
    assert batch[10].text == alone.text
    assert batch[10].token_ids == alone.token_ids
    # A different seed draws differently (the temperature is high enough to show it).
    draws = loop_thread.run(
        run_all(backend, [job("reverse", prompt, temperature=1.5, seed=s) for s in range(8)])
    )
    assert len({d.text for d in draws}) > 1


@pytest.mark.parametrize(
    ("adapter", "error"),
    [
        ("nope", ErrorType.UNKNOWN_ADAPTER),
        ("../adapters/upper", ErrorType.VALIDATION),
        ("/etc/passwd", ErrorType.VALIDATION),
        ("no-such-module", ErrorType.INCOMPATIBLE_ADAPTER),
        ("too-big", ErrorType.INCOMPATIBLE_ADAPTER),
    ],
)
def test_bad_adapters_fail_with_the_hf_engines_error_types(
    backend: VllmBackend, loop_thread: LoopThread, adapter: str, error: ErrorType
) -> None:
    with pytest.raises(EngineError) as caught:
        loop_thread.run(backend.generate(job(adapter, "hello")))
    assert caught.value.type is error, caught.value.message
    # The backend still serves.
    assert loop_thread.run(backend.generate(job("upper", "hello"))).text == "HELLO"


def test_limits_fail_validation(backend: VllmBackend, loop_thread: LoopThread) -> None:
    for request in (job(None, "x" * 80), job(None, "hi", max_new_tokens=49), job(None, "")):
        with pytest.raises(EngineError) as caught:
            loop_thread.run(backend.generate(request))
        assert caught.value.type is ErrorType.VALIDATION


def test_stream_deltas_add_up_to_the_output_and_stop_strings_end_it(
    backend: VllmBackend, loop_thread: LoopThread
) -> None:
    async def collect(request: GenerationRequest) -> list[TextDelta | GenerationOutput]:
        return [item async for item in backend.stream(request)]

    prompt = heldout_inputs()[3]
    whole = ADAPTER_RULES["upper"](prompt)
    items = loop_thread.run(collect(job("upper", prompt)))
    *deltas, output = items
    assert isinstance(output, GenerationOutput) and output.text == whole
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == output.text
    assert len(deltas) > 1 and output.finish_reason == "stop"
    assert output.completion_tokens == len(output.token_ids) > 0
    stop = whole[2:4]
    stopped = loop_thread.run(backend.generate(job("upper", prompt, stop=[stop])))
    assert stopped.text == whole[: whole.index(stop)] and stopped.finish_reason == "stop"
    short = loop_thread.run(backend.generate(job("upper", prompt, max_new_tokens=3)))
    assert short.text == whole[:3] and short.finish_reason == "length"


def test_streamed_deltas_carry_their_tokens_logprobs(
    backend: VllmBackend, loop_thread: LoopThread
) -> None:
    async def collect(request: GenerationRequest) -> list[TextDelta | GenerationOutput]:
        return [item async for item in backend.stream(request)]

    prompt = heldout_inputs()[5]
    wanted = {"logprobs": True, "top_logprobs": 3}
    *deltas, output = loop_thread.run(collect(job("upper", prompt, **wanted)))
    alone = loop_thread.run(backend.generate(job("upper", prompt, **wanted)))
    assert isinstance(output, GenerationOutput) and output.logprobs is not None
    assert output.token_ids == alone.token_ids and output.logprobs == alone.logprobs
    streamed = [entry for d in deltas if isinstance(d, TextDelta) for entry in d.logprobs or []]
    # Every delta carries its tokens' entries; the end-of-text token's comes with none.
    assert all(isinstance(d, TextDelta) and d.logprobs for d in deltas) and len(deltas) > 1
    assert streamed == output.logprobs[: len(streamed)]
    assert len(output.logprobs) - len(streamed) <= 1
    assert "".join(entry.token for entry in output.logprobs).startswith(output.text)


def test_cancel_aborts_a_running_row(backend: VllmBackend, loop_thread: LoopThread) -> None:
    async def cancelled() -> tuple[list[str], GenerationOutput, bool]:
        request = job(None, "abcde" * 12, max_new_tokens=48)
        request.request_id = "to-cancel"
        seen: list[str] = []
        # Closed here, not by the garbage collector: the row is untracked when it closes.
        async with contextlib.aclosing(backend.stream(request)) as stream:
            async for item in stream:
                if isinstance(item, GenerationOutput):
                    break
                seen.append(item.text)
                if len(seen) == 2:
                    assert backend.cancel("to-cancel")
            else:
                raise AssertionError("no output")
        # On the backend's loop, as every caller of the backend is.
        return seen, item, backend.cancel("to-cancel")

    seen, output, cancelled_again = loop_thread.run(cancelled())
    assert output.finish_reason == "cancelled"
    assert output.text == "".join(seen) and output.completion_tokens < 48
    assert not cancelled_again
    assert backend.backend_stats().rows_in_flight == 0


# The HF engine and vLLM on the same model, both in float32 on a CPU (vLLM's "auto" would
# run the float32 demo model in bfloat16: 0.16 apart at log-probabilities near -5), with
# different kernels (vLLM's own attention and LoRA ops): greedy tokens agree exactly,
# log-probabilities within this.
BACKENDS_LOGPROB_TOLERANCE = 1e-4


def test_logprobs_and_penalties_agree_with_the_hf_engine(
    backend: VllmBackend, loop_thread: LoopThread
) -> None:
    settings = backend.backend._settings  # type: ignore[attr-defined]
    penalties = {"repetition_penalty": 2.0, "presence_penalty": 1.5, "frequency_penalty": 0.5}
    pairs = list(zip([*MODELS, "upper"], heldout_inputs()[40:46], strict=True))
    jobs = [job(m, t, logprobs=True, top_logprobs=4) for m, t in pairs]
    jobs += [job(m, t, **penalties) for m, t in pairs]

    async def on_hf_engine() -> list[GenerationOutput]:
        engine = Resolving(Engine.from_settings(settings), settings)
        try:
            return await run_all(engine, jobs)  # type: ignore[arg-type]
        finally:
            await engine.backend.close()

    hf = loop_thread.run(on_hf_engine())
    ours = loop_thread.run(run_all(backend, jobs))
    worst = 0.0
    for theirs, mine in zip(hf[: len(pairs)], ours[: len(pairs)], strict=True):
        assert mine.token_ids == theirs.token_ids
        assert mine.logprobs is not None and theirs.logprobs is not None
        for a, b in zip(mine.logprobs, theirs.logprobs, strict=True):
            # Alternatives in the same order of likelihood; the ids themselves may swap
            # among the near-ties of the tail, so the best only is compared by id.
            assert a.top_logprobs[0].token_id == b.top_logprobs[0].token_id == a.token_id
            values = [a.logprob - b.logprob] + [
                x.logprob - y.logprob for x, y in zip(a.top_logprobs, b.top_logprobs, strict=True)
            ]
            worst = max(worst, *map(abs, values))
            assert a.token == b.token
    print(f"\nlargest |logprob difference| HF engine vs vLLM: {worst:.2e}")
    assert worst < BACKENDS_LOGPROB_TOLERANCE
    penalized = ours[len(pairs) :]
    assert [o.token_ids for o in penalized] == [o.token_ids for o in hf[len(pairs) :]]
    # The penalties acted: some row's text differs from its free run.
    assert any(p.text != f.text for p, f in zip(penalized, ours[: len(pairs)], strict=True))
