"""Build the inference backend that ``LORAQ_ENGINE`` names.

The vLLM backend is imported only when chosen, so that the HF engine (and everything
else) works where vLLM is not installed.
"""

from __future__ import annotations

from workers.engine.backend import Backend
from workers.settings import WorkerSettings


def build_backend(settings: WorkerSettings) -> Backend:
    """The backend of ``settings.engine``, loaded with the model ``settings`` name.

    Call it on the event loop the backend will serve: the vLLM backend binds to it.
    """
    if settings.engine == "vllm":
        from workers.engine.vllm_backend import VllmBackend

        return VllmBackend.from_settings(settings)
    from workers.engine.engine import Engine

    return Engine.from_settings(settings)
