"""Files and batches belong to the API key that made them: another key gets 404."""

from __future__ import annotations

import io

import openai
import pytest

from tests.integration.gateway.batch_files import completions_file
from tests.integration.gateway.conftest import API_KEYS, GatewayApp
from tests.integration.gateway.test_gateway_batches import client_of


def test_another_key_sees_no_file_and_no_batch(secured_gateway: GatewayApp) -> None:
    content = completions_file(secured_gateway.settings.base_model_name, lines=2, bad=False).content
    with (
        client_of(secured_gateway, API_KEYS[0]) as mine,
        client_of(secured_gateway, API_KEYS[1]) as theirs,
    ):
        uploaded = mine.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            theirs.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            theirs.files.content(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            theirs.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
            )
        batch = mine.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
        assert mine.batches.retrieve(batch.id).id == batch.id
        for call in (theirs.batches.retrieve, theirs.batches.cancel):
            with pytest.raises(openai.NotFoundError):
                call(batch.id)
        assert batch.id in [b.id for b in mine.batches.list(limit=100).data]
        assert batch.id not in [b.id for b in theirs.batches.list(limit=100).data]
