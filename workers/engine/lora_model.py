"""One base model and the adapters loaded into it; one forward pass serves mixed rows."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from workers.adapters.loader import delete_adapter, load_adapter

BASE_ADAPTER = "__base__"  # PEFT's marker for a row that uses no adapter


class MultiLoraModel:
    """The base model wrapped once in a PEFT model that holds many adapters.

    Not thread-safe: only the engine's model thread calls it.
    """

    def __init__(self, base: PreTrainedModel) -> None:
        self.base = base
        self.peft: PeftModel | None = None

    @property
    def config(self) -> PretrainedConfig:
        """The base model's config."""
        config: PretrainedConfig = self.base.config
        return config

    def names(self) -> list[str]:
        """Adapters on the device."""
        return list(self.peft.peft_config) if self.peft is not None else []

    def add(self, name: str, folder: Path) -> None:
        """Load the adapter in ``folder`` as ``name``."""
        self.peft = load_adapter(self.peft or self.base, folder, name)

    def remove(self, name: str) -> None:
        """Free adapter ``name``."""
        if self.peft is not None:
            delete_adapter(self.peft, name)

    @torch.inference_mode()
    def last_logits(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        adapter_names: list[str],
    ) -> torch.Tensor:
        """Logits of the last position of every row, ``[rows, vocab]``; fills ``cache``.

        ``input_ids``/``position_ids`` are ``[rows, new]``, ``attention_mask`` is
        ``[rows, cached + new]``; row ``i`` runs with adapter ``adapter_names[i]``.
        """
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "cache": cache,
            "use_cache": True,
            "logits_to_keep": 1,
        }
        if self.peft is None or not self.peft.peft_config:
            # No adapter on the device: every row is a base row, and LoRA layers left
            # behind by deleted adapters pass through.
            output = self.base(**kwargs)
        else:
            output = self.peft(**kwargs, adapter_names=adapter_names)
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits
