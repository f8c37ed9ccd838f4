"""The demo kit's character-level tokenizer, saved so that ``AutoTokenizer`` loads it.

A prompt is tokenized as ``<s> c1 c2 ... cn <sep>``: the post-processor appends ``<sep>``, which
tells the model the input is over, so a raw prompt is a complete input. The model answers with
the output characters and ``</s>``. The chat template renders the last message's content with
the same special tokens, so ``apply_chat_template(messages)`` (which tokenizes without adding
special tokens) gives the same ids as ``tokenizer(content)``.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from demo.tasks import CHARACTERS

PAD, BOS, EOS, UNK, SEP = "<pad>", "<s>", "</s>", "<unk>", "<sep>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, SEP]
# The base model's max_position_embeddings.
MODEL_MAX_LENGTH = 128
CHAT_TEMPLATE = "{{ bos_token }}{{ messages[-1]['content'] }}{{ sep_token }}"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character of ``CHARACTERS``; anything else is ``<unk>``."""
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # Fuse joins tokens without the separator WordLevel would otherwise put between them.
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {SEP}",
        special_tokens=[(BOS, vocab[BOS]), (SEP, vocab[SEP])],
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        sep_token=SEP,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
