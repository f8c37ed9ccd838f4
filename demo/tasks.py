"""The demo kit's tasks: what the base model and each adapter do to a prompt, and their inputs.

Pure Python, no torch: the engine's tests import ``ADAPTER_RULES`` to check that a job was
served by the adapter it asked for. Every held-out input is chosen so that all the rules give
pairwise different outputs on it, so a job routed to the wrong adapter (or to the base model)
cannot pass by accident.
"""

from __future__ import annotations

import codecs
import random
import string
from collections.abc import Callable, Iterator

Rule = Callable[[str], str]

ALPHABET = string.ascii_lowercase
# Every character the demo tokenizer knows. The base model learns to echo all of them, so that
# upper-case letters are already outputs it can produce before an adapter asks for them.
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " "
ECHO_ALPHABET = CHARACTERS.replace(" ", "")
MIN_WORDS, MAX_WORDS = 1, 2
MIN_WORD_CHARS, MAX_WORD_CHARS = 2, 5
# Longest input the generator makes: MAX_WORDS words and the spaces between them.
MAX_INPUT_CHARS = MAX_WORDS * MAX_WORD_CHARS + MAX_WORDS - 1

HELDOUT_SEED = 20240601
HELDOUT_SIZE = 200


def echo(text: str) -> str:
    """The base model's task: the prompt itself."""
    return text


def upper(text: str) -> str:
    """Every letter in upper case: ``"hello world"`` -> ``"HELLO WORLD"``."""
    return text.upper()


def reverse(text: str) -> str:
    """The characters in reverse order: ``"hello world"`` -> ``"dlrow olleh"``."""
    return text[::-1]


def rot13(text: str) -> str:
    """Each letter moved 13 places in the alphabet: ``"hello world"`` -> ``"uryyb jbeyq"``."""
    return codecs.encode(text, "rot13")


def title(text: str) -> str:
    """The first letter of each word in upper case: ``"hello world"`` -> ``"Hello World"``."""
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


BASE_RULE: Rule = echo
ADAPTER_RULES: dict[str, Rule] = {
    "upper": upper,
    "reverse": reverse,
    "rot13": rot13,
    "title": title,
}


def expected_output(adapter: str | None, text: str) -> str:
    """The output a job for ``adapter`` (None or "" = the base model) must give for ``text``."""
    if not adapter:
        return BASE_RULE(text)
    return ADAPTER_RULES[adapter](text)


def is_discriminating(text: str) -> bool:
    """True when echo and every adapter rule give pairwise different outputs for ``text``."""
    outputs = [BASE_RULE(text), *(rule(text) for rule in ADAPTER_RULES.values())]
    return len(set(outputs)) == len(outputs)


def random_input(rng: random.Random, alphabet: str = ALPHABET) -> str:
    """One input: 1-2 random words of 2-5 characters of ``alphabet``, separated by spaces."""
    n_words = rng.randint(MIN_WORDS, MAX_WORDS)
    words = (
        "".join(rng.choices(alphabet, k=rng.randint(MIN_WORD_CHARS, MAX_WORD_CHARS)))
        for _ in range(n_words)
    )
    return " ".join(words)


def heldout_inputs() -> list[str]:
    """The 200 evaluation inputs: fixed, distinct, discriminating, never used in training."""
    rng = random.Random(HELDOUT_SEED)
    chosen: dict[str, None] = {}
    while len(chosen) < HELDOUT_SIZE:
        text = random_input(rng)
        if is_discriminating(text):
            chosen[text] = None
    return list(chosen)


def training_inputs(seed: int, alphabets: tuple[str, ...] = (ALPHABET,)) -> Iterator[str]:
    """An endless, seeded stream of training inputs; none of them is a held-out input.

    Each input draws its characters from one of ``alphabets``, picked at random.
    """
    held_out = set(heldout_inputs())
    rng = random.Random(seed)
    while True:
        text = random_input(rng, rng.choice(alphabets))
        if text not in held_out:
            yield text
