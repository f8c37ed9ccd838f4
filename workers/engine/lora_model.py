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
        # Our names -> PEFT's. Adapter names may hold "." (no torch module name may) or
        # be a substring of PEFT's "lora_" key prefix, so PEFT sees names of our own.
        self._peft_names: dict[str, str] = {}
        self._loads = 0

    @property
    def config(self) -> PretrainedConfig:
        """The base model's config."""
        config: PretrainedConfig = self.base.config
        return config

    def names(self) -> list[str]:
        """Adapters on the device."""
        return list(self._peft_names)

    def add(self, name: str, folder: Path) -> None:
        """Load the adapter in ``folder`` as ``name``."""
        self._loads += 1
        peft_name = f"adapter{self._loads}"
        self.peft = load_adapter(self.peft or self.base, folder, peft_name)
        self._peft_names[name] = peft_name

    def remove(self, name: str) -> None:
        """Free adapter ``name``."""
        peft_name = self._peft_names.pop(name)
        if self.peft is not None:
            delete_adapter(self.peft, peft_name)

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
            peft_names = [
                BASE_ADAPTER if name == BASE_ADAPTER else self._peft_names[name]
                for name in adapter_names
            ]
            output = self.peft(**kwargs, adapter_names=peft_names)
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits
