"""Turn a request into prompt token ids, enforcing the engine's limits."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError

from schemas import ErrorType
from workers.engine.chat_templates import chat_template
from workers.engine.requests import EngineError, GenerationRequest


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorType.VALIDATION, message)


def _render(tokenizer: Any, request: GenerationRequest) -> tuple[str, bool]:
    """The prompt text and whether the tokenizer should add its special tokens."""
    if request.messages:
        # The adapter's own template, when its folder has one; else the base model's.
        own = chat_template(request.resolved) if request.resolved else None
        if not own and not getattr(tokenizer, "chat_template", None):
            raise _invalid("this model has no chat template: send 'prompt' instead of 'messages'")
        messages = [message.model_dump() for message in request.messages]
        try:
            text = tokenizer.apply_chat_template(
                messages, chat_template=own, tokenize=False, add_generation_prompt=True
            )
        except TemplateSyntaxError as exc:
            if own is None:
                raise
            # The adapter's fault, not the request's.
            raise EngineError(
                ErrorType.INCOMPATIBLE_ADAPTER,
                f"adapter {request.adapter}: its chat template does not parse: {exc}",
            ) from None
        except TemplateError as exc:  # e.g. the template's raise_exception on a role order
            raise _invalid(f"the chat template refused these messages: {exc}") from None
        # A chat template writes its own BOS and friends.
        return str(text), False
    if not request.prompt:
        raise _invalid("the prompt is empty: send a non-empty 'prompt' or 'messages'")
    return request.prompt, True


def encode_request(
    tokenizer: Any, request: GenerationRequest, *, max_input_tokens: int, max_new_tokens: int
) -> list[int]:
    """Prompt ids of ``request``; ``validation`` error when it breaks a limit."""
    if request.params.max_new_tokens > max_new_tokens:
        raise _invalid(
            f"max_new_tokens {request.params.max_new_tokens} is over this server's cap "
            f"of {max_new_tokens}"
        )
    text, special = _render(tokenizer, request)
    ids: list[int] = tokenizer(text, add_special_tokens=special)["input_ids"]
    if not ids:
        raise _invalid("the prompt encodes to no tokens")
    if len(ids) > max_input_tokens:
        raise _invalid(
            f"the prompt is {len(ids)} tokens, over this server's limit of {max_input_tokens}"
        )
    return ids
