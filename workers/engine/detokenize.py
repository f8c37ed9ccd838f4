"""Incremental detokenisation: a row's new text per token from a short window of tokens.

Decoding a row's whole token list every step costs O(tokens) per step. Here each step
decodes only the tokens since the last text handed out, plus the token before them as
context (decoders that drop a leading space, or join pieces, need one), the way vLLM and
``tokenizers.DecodeStream`` do: the new text is the window's text past its context's text.
A window whose text ends with replacement characters holds a multi-byte character split
across tokens: the text before them is handed out, the window stays open for the next
token, and no half character is handed out; at the end of the row
:meth:`IncrementalDecoder.flush` hands out whatever is left, exactly as a decode of the
whole list would show it. So the text handed out after each token is the full decode of
the tokens so far without its trailing replacement characters, as before, at O(window).
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Follows one row's token list (shared with the row, appended to by it)."""

    def __init__(self, tokenizer: Any, tokens: list[int]) -> None:
        self._tokenizer = tokenizer
        self._tokens = tokens
        # tokens[_context:_read] were handed out already and give the window its context;
        # tokens[_read:] are not handed out yet.
        self._context = 0
        self._read = 0
        self._partial = 0  # characters of the open window handed out already

    def step(self) -> str:
        """The text that the tokens appended since the last call add (maybe ``""``)."""
        return self._advance(final=False)

    def flush(self) -> str:
        """The row has ended: the text still held back (a trailing half character)."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._tokens):
            return ""
        context = self._decode(self._tokens[self._context : self._read])
        window = self._decode(self._tokens[self._context :])
        # Characters before trailing replacements are complete: more bytes cannot change them.
        visible = window if final else window.rstrip(REPLACEMENT)
        start = len(context) + self._partial
        delta = visible[start:]
        if len(visible) < len(window):
            self._partial += len(delta)  # half a character at the end: the window stays open
        elif delta:
            self._context, self._read, self._partial = self._read, len(self._tokens), 0
        return delta

    def _decode(self, tokens: list[int]) -> str:
        if not tokens:
            return ""
        text: str = self._tokenizer.decode(tokens, skip_special_tokens=True)
        return text
