"""One base model and the adapters loaded into it; one forward pass serves mixed rows."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache

from workers.adapters.host_weights import HostAdapter, parse_adapter
from workers.adapters.loader import delete_adapter, load_adapter
from workers.adapters.validation import base_module_shapes
from workers.engine.cpu_layout import unpack_linears
from workers.engine.stacked_lora import StackedLora, linear_modules

BASE_ADAPTER = "__base__"  # PEFT's marker for a row that uses no adapter


def cache_argument(model: nn.Module) -> str:
    """The name under which ``model``'s forward takes its KV cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name only warns
    there), while 5.19, which the vLLM extra pins, and 5.17, the GPU machine's, know
    ``past_key_values`` only: a cache under the other name would be swallowed by
    ``**kwargs`` and the model would build a fresh ``DynamicCache`` of its own.
    """
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class MultiLoraModel:
    """The base model with device slots for many adapters; one forward pass serves mixed rows.

    Plain LoRA adapters live in the stacked slots (:mod:`stacked_lora`): adding one is a
    copy of its host tensors. The others are loaded into one PEFT wrapper of the base
    model and take PEFT's path: its plain path when a pass holds that adapter only, else
    its per-row path (``adapter_names``), where stacked and base rows are ``__base__``.
    PEFT's per-row names are injected by pre-hooks that stay registered on its LoRA
    layers (PEFT's own forward would walk every module twice per call to add and remove
    its hooks). Not thread-safe: only the model thread calls it.
    """

    def __init__(self, base: PreTrainedModel, *, capacity: int, cpu_kernel: bool = True) -> None:
        """``capacity`` adapter slots; ``cpu_kernel``: their deltas through loraq's CPU
        kernel where it applies (:class:`~workers.engine.stacked_lora.StackedLora`)."""
        self.base = base
        self.peft: PeftModel | None = None
        # Our names -> PEFT's. Adapter names may hold "." (no torch module name may) or
        # be a substring of PEFT's "lora_" key prefix, so PEFT sees names of our own.
        self._peft_names: dict[str, str] = {}
        self._loads = 0
        self._hooked: set[int] = set()
        self._row_adapters: list[str] | None = None  # what the PEFT hooks inject, when set
        # Before PEFT wraps anything: the hooks belong on the base modules themselves.
        self._shapes = base_module_shapes(base)
        self._stacked = StackedLora(linear_modules(base), capacity, cpu_kernel=cpu_kernel)
        self._cache_argument = cache_argument(base)
        self.peft_loads = 0  # PEFT loads read their folder here, on the model thread

    def compile_decoder(self) -> None:
        """``torch.compile`` the decoder stack (dynamic shapes, so rows and lengths that
        change do not recompile each step). The LoRA hooks and the slot cache run inside
        it; a change of their Python state (adapters, a pass's slots) may recompile."""
        decoder = self.base.get_decoder()  # type: ignore[no-untyped-call]
        decoder.forward = torch.compile(decoder.forward, dynamic=True)

    @property
    def config(self) -> PretrainedConfig:
        """The base model's config."""
        config: PretrainedConfig = self.base.config
        return config

    @property
    def stacked_in_use(self) -> bool:
        """Whether every adapter on the device is in a stacked slot (no PEFT pass needed)."""
        return not self._peft_names

    def names(self) -> list[str]:
        """Adapters on the device."""
        return [*self._stacked.names(), *self._peft_names]

    def adapter_bytes(self) -> int:
        """Device bytes held for adapters: the stacked slots and PEFT's LoRA weights."""
        peft = (
            0
            if self.peft is None
            else sum(p.nbytes for n, p in self.peft.named_parameters() if "lora_" in n)
        )
        return self._stacked.nbytes() + peft

    def is_stacked(self, name: str) -> bool:
        """Whether ``name`` is in a stacked slot (so its rows need no PEFT module)."""
        return self._stacked.holds(name)

    def add(self, name: str, source: HostAdapter | Path) -> None:
        """Put adapter ``name`` on the device: a copy into a slot when it stacks, else a
        PEFT load of its folder. A bare folder is parsed here first (tests and tools)."""
        adapter = source
        if isinstance(adapter, Path):
            adapter = parse_adapter(adapter, shapes=self._shapes)
        if self._stacked.can_hold(adapter):
            self._stacked.add(name, adapter)
            return
        self.add_peft(name, adapter)

    def add_peft(self, name: str, source: HostAdapter | Path) -> None:
        """Put adapter ``name`` on the device through PEFT, whatever its kind: the path
        :meth:`add` takes for what the stacked slots cannot hold (the bench and the tests
        run plain LoRA on it too, to compare the two paths)."""
        folder = source if isinstance(source, Path) else source.folder
        # PEFT's layers may read the base weights (DoRA's norms): dense ones, for good.
        unpack_linears(self.base)
        self._loads += 1
        self.peft_loads += 1
        peft_name = f"adapter{self._loads}"
        self.peft = load_adapter(self.peft or self.base, folder, peft_name)
        self._peft_names[name] = peft_name
        self._hook_new_layers()

    def remove(self, name: str) -> None:
        """Free adapter ``name``."""
        if self._stacked.holds(name):
            self._stacked.remove(name)
            return
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
        cache: Cache,
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
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_argument: cache},
            )
        finally:
            self._row_adapters = None
            self._stacked.end()
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    def _route(self, adapter_names: list[str], device: torch.device) -> None:
        """Set up this pass: stacked deltas for stacked rows; for PEFT's adapters, its
        plain path when every row is one of them, else its per-row path."""
        self._stacked.begin(adapter_names, device)
        if self.peft is None:
            return
        peft_rows = [self._peft_names.get(name, BASE_ADAPTER) for name in adapter_names]
        distinct = set(peft_rows)
        if len(distinct) == 1 and BASE_ADAPTER not in distinct:
            peft_name = peft_rows[0]
            if self.peft.active_adapter != peft_name:
                self.peft.set_adapter(peft_name, inference_mode=True)
        else:
            # Also when no row is PEFT's: the active adapter must add nothing.
            self._row_adapters = peft_rows

    def _hook_new_layers(self) -> None:
        # A new adapter may target modules no earlier adapter touched: hook those too.
        for module in self.base.modules():
            hookable = isinstance(module, LoraLayer | AuxiliaryTrainingWrapper)
            if hookable and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._hooked.add(id(module))

    def _inject(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._row_adapters is not None:
            kwargs["adapter_names"] = self._row_adapters
        return args, kwargs
