"""Load the base model and its tokenizer from the worker settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """The base model in eval mode on its device, and its left-padding tokenizer."""

    model: PreTrainedModel
    tokenizer: Any
    device: torch.device


def resolve_device(setting: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("LORAQ_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def quantization_config(setting: str, dtype: torch.dtype | None) -> BitsAndBytesConfig | None:
    """The bitsandbytes config for ``none | 8bit | 4bit`` (both run on CPU too)."""
    if setting == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    if setting == "4bit":
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype or torch.float32,
        )
    return None


def load_tokenizer(settings: WorkerSettings) -> Any:
    """The tokenizer, padding on the left so that every row's last token is aligned."""
    tokenizer = AutoTokenizer.from_pretrained(
        settings.model, padding_side="left", trust_remote_code=settings.trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(settings: WorkerSettings) -> LoadedModel:
    """Base model and tokenizer as the settings ask (model, dtype, device, attention, bnb)."""
    device = resolve_device(settings.device)
    dtype = _DTYPES.get(settings.dtype)
    quantization = quantization_config(settings.quantization, dtype)
    kwargs: dict[str, Any] = {
        "dtype": dtype or "auto",
        "trust_remote_code": settings.trust_remote_code,
    }
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if quantization is not None:
        # bitsandbytes logs a warning on every 8-bit matmul of a float32 input, that is,
        # several times per forward pass.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        # bitsandbytes places the quantized weights itself.
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": str(device)}
    model = AutoModelForCausalLM.from_pretrained(settings.model, **kwargs)
    if quantization is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    log.info(
        "loaded %s on %s (dtype %s, quantization %s)",
        settings.model,
        device,
        model.dtype,
        settings.quantization,
    )
    return LoadedModel(model=model, tokenizer=load_tokenizer(settings), device=device)
