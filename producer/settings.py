"""Client-side settings (environment prefix ``LORAQ_``, ``.env`` supported)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from typing_extensions import Self

from producer.redis_modes import RedisMode, mode_problems, parse_sentinels
from schemas.keys import DEFAULT_PREFIX

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_JOB_TTL_S = 7 * 86400
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
DEFAULT_SENTINEL_SERVICE = "mymaster"
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"


class ClientSettings(BaseSettings):
    """What a producer needs: where Redis is and which key prefix to use."""

    model_config = SettingsConfigDict(env_prefix="LORAQ_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        None, description=f"Redis URL; unset means {DEFAULT_REDIS_URL} or the embedded server."
    )
    prefix: str = Field(DEFAULT_PREFIX, min_length=1, description="Key prefix {P}.")
    job_ttl_s: int = Field(
        DEFAULT_JOB_TTL_S, ge=60, description="TTL of a job record until it ends."
    )
    result_ttl_s: int = Field(86400, ge=1, description="Default TTL of a record after the end.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Socket connect timeout.")
    socket_timeout_s: float = Field(
        10.0, gt=0, description="Socket read timeout; blocking reads stay below it."
    )
    connect_retries: int = Field(3, ge=0, description="Retries of a failed connection.")
    redis_sentinels: str | None = Field(
        None,
        description="Sentinel mode: host:port,host:port of the sentinels; the URL then gives "
        "only the database, user, password and TLS (rediss://) of the primary.",
    )
    redis_sentinel_service: str = Field(
        DEFAULT_SENTINEL_SERVICE, min_length=1, description="Sentinel mode: the service name."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Sentinel mode: the sentinels' own password (requirepass)."
    )
    redis_cluster: bool = Field(
        False,
        description="Cluster mode: the URL names any node; the prefix needs a {hash tag}.",
    )
    tenant_rate_per_s: float = Field(
        0.0,
        ge=0,
        description="Jobs per second each tenant may submit (a token bucket checked at "
        "enqueue, over HTTP a 429 with Retry-After; the workers hold back jobs pushed past "
        "it); 0: no limit.",
    )
    tenant_burst: int = Field(
        0, ge=0, description="Jobs a tenant may submit at once; 0: one second's worth."
    )
    redis_min_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must have a new job (and a final result) before it "
        "counts as written: WAIT after each enqueue and final write (not in Cluster mode).",
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, description="How long that WAIT may take; past it the write is an error."
    )

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_parse(cls, value: str | None) -> str | None:
        if value:
            parse_sentinels(value)
        return value or None

    @model_validator(mode="after")
    def _mode_fits(self) -> Self:
        problems = mode_problems(
            sentinels=self.redis_sentinels,
            cluster=self.redis_cluster,
            prefix=self.prefix,
            min_replicas=self.redis_min_replicas,
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def redis_mode(self) -> RedisMode:
        """Which kind of Redis deployment the settings name."""
        if self.redis_sentinels:
            return RedisMode.SENTINEL
        return RedisMode.CLUSTER if self.redis_cluster else RedisMode.PLAIN

    @property
    def effective_redis_url(self) -> str:
        """The configured URL, or the default one."""
        return self.redis_url or DEFAULT_REDIS_URL


class AdapterRootSettings(ClientSettings):
    """:class:`ClientSettings` and the adapter roots: where the workers find adapters, and
    the only folders ``loraq adapters add`` registers (the workers refuse any other)."""

    adapters: dict[str, str] = Field(
        default_factory=dict, description="JSON map of adapter name -> folder."
    )
    adapter_dir: str | None = Field(
        str(DEMO_DIR / "adapters"), description="Folder scanned for adapter sub-folders."
    )


class GatewaySettings(BaseSettings):
    """Where the CLI's ``loraq batch`` verbs reach the HTTP gateway, and with which key."""

    model_config = SettingsConfigDict(env_prefix="LORAQ_", env_file=".env", extra="ignore")

    gateway_url: str = Field(
        DEFAULT_GATEWAY_URL, description="Base URL of the gateway (its route prefix included)."
    )
    api_key: SecretStr | None = Field(None, description="API key sent as a Bearer token.")
    http_timeout_s: float = Field(60.0, gt=0, description="Timeout of one HTTP request.")
