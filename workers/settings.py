"""Worker-side settings (environment prefix ``LORAQ_``, ``.env`` supported).

Every field here is documented in the README's configuration table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from producer.settings import ClientSettings

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"


class WorkerSettings(ClientSettings):
    """Everything a worker (engine, Serve app) reads; a superset of the client settings."""

    model_config = SettingsConfigDict(env_prefix="LORAQ_", env_file=".env", extra="ignore")

    # Base model
    model: str = Field(str(DEMO_DIR / "model"), description="Base model name or path.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager.")
    quantization: Literal["none", "8bit", "4bit"] = "none"
    trust_remote_code: bool = False

    # Adapters
    adapters: dict[str, str] = Field(
        default_factory=dict, description="JSON map of adapter name -> folder."
    )
    adapter_dir: str | None = Field(
        str(DEMO_DIR / "adapters"), description="Folder scanned for adapter sub-folders."
    )
    max_adapters_per_replica: int = Field(8, ge=1)
    max_lora_rank: int = Field(64, ge=1)

    # Batching and limits
    max_batch_size: int = Field(16, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0)
    max_input_tokens: int = Field(2048, ge=1)
    max_new_tokens: int = Field(512, ge=1, description="Cap on a job's max_new_tokens.")
