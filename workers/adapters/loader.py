"""The only PEFT I/O: put adapters into the one PEFT wrapper of the base model, take them out.

Every function here mutates the model and must run on the thread that owns it, never
while a forward pass is running.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel


def load_adapter(model: PreTrainedModel | PeftModel, folder: Path, name: str) -> PeftModel:
    """Load the adapter in ``folder`` as ``name`` and return the PEFT wrapper holding it.

    The first load wraps the base model; later loads add to that same wrapper, so the
    base weights exist once whatever the number of adapters.
    """
    if isinstance(model, PeftModel):
        model.load_adapter(str(folder), adapter_name=name, low_cpu_mem_usage=True)
        _keep_active_adapter_valid(model)
        return model
    with warnings.catch_warnings():
        # PEFT's wrapper asks the model for transformers' deprecated alias (PEFT 0.21 with
        # transformers 5): a FutureWarning on every first load that no user can act on.
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        wrapped = PeftModel.from_pretrained(
            model, str(folder), adapter_name=name, low_cpu_mem_usage=True
        )
    wrapped.eval()
    return wrapped


def delete_adapter(model: PeftModel, name: str) -> None:
    """Free the weights of adapter ``name``."""
    others = [other for other in model.peft_config if other != name]
    if others and model.active_adapter == name:
        model.set_adapter(
            others[0], inference_mode=True
        )  # or PEFT warns that it moves the active adapter itself
    model.delete_adapter(name)
    _keep_active_adapter_valid(model)


def _keep_active_adapter_valid(model: PeftModel) -> None:
    # Mixed batches ignore the active adapter, but PeftModel.forward looks its config up;
    # PEFT leaves a deleted adapter active in some cases, so point it at a live one.
    names = list(model.peft_config)
    if names and model.active_adapter not in names:
        model.set_adapter(names[0], inference_mode=True)
