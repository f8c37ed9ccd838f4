"""Every bad request fails alone, with a clear error; the rest of its batch succeeds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from engine_kit import Kit, Reference, request, start_engine, stop_engine

from schemas import ErrorType, Message
from workers.engine.engine import Engine
from workers.engine.requests import EngineError, GenerationOutput, GenerationRequest


@pytest.fixture(scope="module")
def engine(kit: Kit) -> Iterator[Engine]:
    """The good adapters by scan; the bad ones and "late" from the static map."""
    static = {folder.name: str(folder) for folder in kit.extra.iterdir()}
    static["team.v2"] = str(kit.extra / "late")
    engine = start_engine(kit.settings(adapters=static))
    yield engine
    stop_engine(engine)


BAD: list[tuple[GenerationRequest, ErrorType, str]] = [
    (request("nope", "hi", 8), ErrorType.UNKNOWN_ADAPTER, "not registered"),
    (request("../x", "hi", 8), ErrorType.VALIDATION, "invalid"),
    (request("a/../b", "hi", 8), ErrorType.VALIDATION, "invalid"),
    (request("too-big", "hi", 8), ErrorType.INCOMPATIBLE_ADAPTER, "over max_lora_rank"),
    (request("no-such-module", "hi", 8), ErrorType.INCOMPATIBLE_ADAPTER, "do not exist"),
    (request("other-width", "hi", 8), ErrorType.INCOMPATIBLE_ADAPTER, "width"),
    (request("a", "x" * 65, 8), ErrorType.VALIDATION, "over this server's limit"),
    (request("a", "hi", 49), ErrorType.VALIDATION, "over this server's cap"),
    (request("b", "", 8), ErrorType.VALIDATION, "empty"),
    (request(None, "", 8), ErrorType.VALIDATION, "empty"),
]
GOOD: list[tuple[str | None, str, int]] = [
    ("a", "good one", 12),
    (None, "good base", 12),
    ("b", "good two", 12),
    ("late", "registered at run time", 12),
]


async def test_bad_requests_fail_alone_in_a_batch(engine: Engine, reference: Reference) -> None:
    good = [request(*row) for row in GOOD]
    results = await asyncio.gather(
        *[engine.generate(job) for job in [*good, *(bad for bad, _, _ in BAD)]],
        return_exceptions=True,
    )
    for (adapter, prompt, max_new), output in zip(GOOD, results, strict=False):
        assert isinstance(output, GenerationOutput), output
        if adapter != "late":
            assert output.token_ids == reference(adapter, prompt, max_new)
    for (_, error_type, fragment), result in zip(BAD, results[len(GOOD) :], strict=True):
        assert isinstance(result, EngineError), result
        assert result.type is error_type, result.message
        assert fragment in result.message
    # Incompatible adapters never reached the device; the engine keeps serving.
    assert not {"too-big", "no-such-module", "other-width"} & set(engine.loaded_adapters())
    again = await engine.generate(request("c", "still fine", 8))
    assert again.token_ids == reference("c", "still fine", 8)


async def test_errors_are_raised_by_the_stream_too(engine: Engine) -> None:
    with pytest.raises(EngineError) as caught:
        async for _ in engine.stream(request("nope", "hi", 8)):
            pass
    assert caught.value.type is ErrorType.UNKNOWN_ADAPTER


async def test_ensure_adapter_reports_unknown_and_incompatible(engine: Engine) -> None:
    with pytest.raises(EngineError) as unknown:
        await engine.ensure_adapter("nope")
    assert unknown.value.type is ErrorType.UNKNOWN_ADAPTER
    with pytest.raises(EngineError) as bad:
        await engine.ensure_adapter("too-big")
    assert bad.value.type is ErrorType.INCOMPATIBLE_ADAPTER
    await engine.ensure_adapter("d")
    assert "d" in engine.loaded_adapters()


async def test_names_may_hold_dots(engine: Engine) -> None:
    dotted, plain = await asyncio.gather(
        engine.generate(request("team.v2", "same weights", 10)),
        engine.generate(request("late", "same weights", 10)),
    )
    assert dotted.token_ids == plain.token_ids
    assert dotted.adapter == "team.v2" and dotted.adapter_version


async def test_an_unresolved_adapter_never_reaches_the_backend(engine: Engine) -> None:
    with pytest.raises(EngineError) as caught:
        await engine.backend.generate(request("a", "hi", 4))
    assert caught.value.type is ErrorType.INTERNAL and "unresolved" in caught.value.message


async def test_chat_messages_use_the_template(engine: Engine, reference: Reference) -> None:
    chat = GenerationRequest(
        adapter="a", messages=[Message(role="user", content="hi")], request_id="chat"
    )
    chat.params.max_new_tokens = 8
    output = await engine.generate(chat)
    assert output.token_ids == reference("a", "user: hi\nassistant: ", 8)
