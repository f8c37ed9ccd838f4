"""Incremental detokenisation and stop strings against decoding the whole token list.

Random token sequences of the demo tokenizer, and of two tokenizers built here whose
tokens split multi-byte characters (byte-level BPE as GPT-2's, byte fallback with a
leading-space marker as Llama-2's), go through a real :class:`Row`; the reference decodes
the whole list after every token, as the decode loop did before.

Byte fallback decodes a run of byte tokens as one unit and turns every byte of an invalid
run into a replacement character, ASCII bytes included: a later token changes text
already shown, so no streamed text (the old full decode's neither) can stay a prefix of
the final one. The comparison therefore takes the sequences whose full decodes after each
token (less trailing replacement characters) are prefixes of the final decode: all of them
for the demo and byte-level tokenizers, those with valid byte runs for byte fallback.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from schemas import GenerationParams
from workers.engine.decode import FinishReason, Row
from workers.engine.detokenize import IncrementalDecoder
from workers.engine.sampling import RowSampler
from workers.engine.stopping import TextTracker

DEMO = Path(__file__).resolve().parents[2] / "demo" / "model"
TEXT = "héllo wörld ✓ 日本語 🙂 ab"


def byte_level() -> PreTrainedTokenizerFast:
    """Every byte a token (GPT-2's byte-to-unicode alphabet)."""
    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="ab")  # type: ignore[no-untyped-call]


def byte_fallback() -> PreTrainedTokenizerFast:
    """Llama-2's decoder: "▁" for a space, <0xNN> byte tokens, the first space stripped."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    pieces += ["▁", "▁h", "é", "llo", "▁w", "ö", "rld", "✓", "▁日本"]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


TOKENIZERS = {
    "demo": lambda: AutoTokenizer.from_pretrained(DEMO),
    "byte-level": byte_level,
    "byte-fallback": byte_fallback,
}


class Collect:
    """A row's sink that keeps what it is handed."""

    def __init__(self) -> None:
        self.streamed = ""

    def delta(self, text: str) -> None:
        self.streamed += text

    def finish(self, row: Row, reason: FinishReason) -> None:
        self.streamed += row.flush_text()

    def fail(self, row: Row, error: Exception) -> None:
        raise error


def reference(tokenizer: object, tokens: list[int], stops: list[str]) -> tuple[str, int]:
    """Text and tokens taken when the whole list is decoded after every token."""
    for count in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:count], skip_special_tokens=True)  # type: ignore[attr-defined]
        found = [text.find(stop) for stop in stops if stop in text]
        if found:
            return text[: min(found)], count
    return tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)  # type: ignore[attr-defined]


def run_row(tokenizer: object, tokens: list[int], stops: list[str]) -> tuple[str, str, int]:
    """(final text, streamed text, tokens taken) through a real row."""
    sink = Collect()
    row = Row(
        prompt_ids=[1],
        adapter="__base__",
        max_new_tokens=len(tokens),
        sampler=RowSampler.create(GenerationParams(), torch.device("cpu")),
        sink=sink,
        text=TextTracker(stops),
    )
    for token in tokens:
        if row.accept(token, frozenset(), tokenizer) is not None:
            break
    sink.finish(row, "length")
    return row.text.text, sink.streamed, len(row.tokens)


def random_tokens(tokenizer: object, rng: random.Random, length: int) -> list[int]:
    """Mostly the tokens of real text (split multi-byte characters), some random ones."""
    real = tokenizer(TEXT, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    vocab = len(tokenizer)  # type: ignore[arg-type]
    start = rng.randrange(len(real))
    return [
        real[(start + i) % len(real)] if rng.random() < 0.7 else rng.randrange(vocab)
        for i in range(length)
    ]


def prefix_stable(tokenizer: object, tokens: list[int]) -> bool:
    """Whether each full decode so far, less trailing replacements, starts the final one."""
    decode = tokenizer.decode  # type: ignore[attr-defined]
    final = decode(tokens, skip_special_tokens=True)
    return all(
        final.startswith(decode(tokens[:count], skip_special_tokens=True).rstrip("\ufffd"))
        for count in range(1, len(tokens))
    )


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_text_and_stops_match_the_full_decode(name: str) -> None:
    tokenizer = TOKENIZERS[name]()
    rng = random.Random(name)
    compared = 0
    while compared < 150:
        tokens = random_tokens(tokenizer, rng, rng.randrange(1, 40))
        if not prefix_stable(tokenizer, tokens):
            assert name == "byte-fallback", tokens
            continue
        compared += 1
        full = tokenizer.decode(tokens, skip_special_tokens=True)
        stops = []
        if full and rng.random() < 0.7:  # stops that occur, often spanning tokens
            start = rng.randrange(len(full))
            stops.append(full[start : start + rng.randrange(1, 4)].replace("\ufffd", "") or "§")
        text, streamed, taken = run_row(tokenizer, tokens, stops)
        assert (text, taken) == reference(tokenizer, tokens, stops), (tokens, stops)
        assert streamed == text


def test_a_character_split_across_tokens_waits_for_its_last_byte() -> None:
    tokenizer = byte_level()
    tokens = tokenizer("a✓", add_special_tokens=False)["input_ids"]
    assert len(tokens) == 4  # "a" and the three bytes of the check mark
    row_tokens: list[int] = []
    decoder = IncrementalDecoder(tokenizer, row_tokens)
    pieces = []
    for token in tokens:
        row_tokens.append(token)
        pieces.append(decoder.step())
    assert pieces == ["a", "", "", "✓"]


def test_each_step_decodes_a_window_not_the_whole_list() -> None:
    tokenizer = TOKENIZERS["demo"]()
    lengths: list[int] = []

    class Counting:
        def decode(self, tokens: list[int], **kwargs: object) -> str:
            lengths.append(len(tokens))
            return tokenizer.decode(tokens, **kwargs)  # type: ignore[no-any-return]

    tokens: list[int] = []
    decoder = IncrementalDecoder(Counting(), tokens)
    ids = tokenizer("abcdefgh" * 25, add_special_tokens=False)["input_ids"]
    for token in ids:
        tokens.append(token)
        decoder.step()
    assert len(ids) == 200 and max(lengths) <= 2
