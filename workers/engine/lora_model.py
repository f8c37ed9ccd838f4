"""One base model and the adapters loaded into it; one forward pass serves mixed rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from workers.adapters.loader import delete_adapter, load_adapter
from workers.engine.stacked_lora import StackedLora

BASE_ADAPTER = "__base__"  # PEFT's marker for a row that uses no adapter


class MultiLoraModel:
    """The base model wrapped once in a PEFT model that holds many adapters.

    A pass of one adapter takes PEFT's plain path with that adapter active, as
    ``set_adapter`` + ``generate`` would. A mixed pass adds each row's LoRA delta from
    stacked weights (:mod:`stacked_lora`) when all adapters are plain LoRA, else takes
    PEFT's per-row path (``adapter_names``). Both are driven by hooks that stay
    registered on the LoRA layers (PEFT's own forward would walk every module twice per
    call to add and remove its hooks). Not thread-safe: only the model thread calls it.
    """

    def __init__(self, base: PreTrainedModel, *, capacity: int) -> None:
        self.base = base
        self.peft: PeftModel | None = None
        # Our names -> PEFT's. Adapter names may hold "." (no torch module name may) or
        # be a substring of PEFT's "lora_" key prefix, so PEFT sees names of our own.
        self._peft_names: dict[str, str] = {}
        self._loads = 0
        self._hooked: set[int] = set()
        self._row_adapters: list[str] | None = None  # what the hooks inject, when set
        self._stacked = StackedLora(capacity)
        # False sends every mixed pass through PEFT's per-row path (for comparisons).
        self.prefer_stacked = True

    @property
    def config(self) -> PretrainedConfig:
        """The base model's config."""
        config: PretrainedConfig = self.base.config
        return config

    @property
    def stacked_in_use(self) -> bool:
        """Whether mixed passes now take the stacked path."""
        return self.prefer_stacked and self._stacked.usable

    def names(self) -> list[str]:
        """Adapters on the device."""
        return list(self._peft_names)

    def add(self, name: str, folder: Path) -> None:
        """Load the adapter in ``folder`` as ``name``."""
        self._loads += 1
        peft_name = f"adapter{self._loads}"
        self.peft = load_adapter(self.peft or self.base, folder, peft_name)
        self._peft_names[name] = peft_name
        self._hook_new_layers()
        self._stacked.add(self.base, name, peft_name)

    def remove(self, name: str) -> None:
        """Free adapter ``name``."""
        peft_name = self._peft_names.pop(name)
        if self.peft is not None:
            delete_adapter(self.peft, peft_name)
        self._stacked.remove(name)

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
        self._route(adapter_names, input_ids.device)
        try:
            output = self.base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            self._row_adapters = None
            self._stacked.end()
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    def _route(self, adapter_names: list[str], device: torch.device) -> None:
        """Choose the LoRA path of this pass: none, plain, stacked or PEFT's per-row one."""
        distinct = set(adapter_names)
        if self.peft is None:
            return
        if not self._peft_names or distinct == {BASE_ADAPTER}:
            # Base rows only: PEFT's per-row path with every row on the base marker.
            self._row_adapters = [BASE_ADAPTER] * len(adapter_names)
        elif len(distinct) == 1:
            peft_name = self._peft_names[adapter_names[0]]
            if self.peft.active_adapter != peft_name:
                self.peft.set_adapter(peft_name, inference_mode=True)
        elif self.stacked_in_use:
            # PEFT computes the base output only; the stacked hooks add each row's delta.
            self._row_adapters = [BASE_ADAPTER] * len(adapter_names)
            self._stacked.begin(adapter_names, device)
        else:
            self._row_adapters = [
                BASE_ADAPTER if name == BASE_ADAPTER else self._peft_names[name]
                for name in adapter_names
            ]

    def _hook_new_layers(self) -> None:
        # A new adapter may target modules no earlier adapter touched: hook those too.
        for module in self.base.modules():
            hookable = isinstance(module, LoraLayer | AuxiliaryTrainingWrapper)
            if hookable and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._inject, with_kwargs=True)
                module.register_forward_hook(self._stacked.add_delta, with_kwargs=True)
                self._hooked.add(id(module))

    def _inject(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._row_adapters is not None:
            kwargs["adapter_names"] = self._row_adapters
        return args, kwargs
