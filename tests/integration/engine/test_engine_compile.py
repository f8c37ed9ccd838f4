"""The oracle with the decoder compiled (LORAQ_COMPILE_DECODER): the same tokens as PEFT.

Compiling takes most of this module's time (half a minute to over three minutes on two
shared CPU cores), so it runs one mixed batch: stacked adapters and base rows of
different lengths, joining together, with a longer timeout than the suite's 300 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from engine_kit import Kit, Reference, request, start_engine, stop_engine
from test_engine_oracle import ROWS

from workers.engine.engine import Engine


@pytest.fixture(scope="module")
def engine(kit: Kit) -> Iterator[Engine]:
    engine = start_engine(kit.settings(compile_decoder=True))
    yield engine
    stop_engine(engine)


@pytest.mark.timeout(600)
async def test_a_compiled_decoder_matches_peft_alone(engine: Engine, reference: Reference) -> None:
    outputs = await asyncio.gather(*[engine.generate(request(*row)) for row in ROWS])
    for (adapter, prompt, max_new), output in zip(ROWS, outputs, strict=True):
        assert output.token_ids == reference(adapter, prompt, max_new), (adapter, prompt)
