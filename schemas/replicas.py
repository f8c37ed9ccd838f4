"""The heartbeats of the workers: model replicas write theirs to ``{P}:replicas``,
consumers theirs to ``{P}:consumers``. Informational, not part of the job contract (a
client that never reads them loses nothing)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from schemas.tenants import TenantFigures

# A model replica or consumer whose last heartbeat is older than this many intervals is
# taken as gone.
MISSED_BEATS = 3

# The backend counters a replica heartbeat carried at its top level before they moved
# under ``backend``; still written there too, for readers of that form.
FLAT_BACKEND_FIELDS = (
    "rows_in_flight",
    "cache_hits",
    "cache_loads",
    "cache_evictions",
    "host_hits",
    "host_loads",
    "host_evictions",
    "host_bytes",
    "host_load_ms_total",
    "device_copy_ms_total",
    "model_thread_disk_reads",
    "in_use_evictions",
    "tokens_generated",
)


class Heartbeat(BaseModel):
    """What every heartbeat has: when it was made, and how often its writer beats."""

    # Readers ignore fields a newer writer adds.
    model_config = ConfigDict(extra="ignore")

    ts: float = Field(description="Epoch seconds of this heartbeat.")
    interval_s: float = Field(gt=0, description="Seconds between this writer's heartbeats.")

    @property
    def name(self) -> str:
        """The writer's name: its field in the heartbeat hash."""
        raise NotImplementedError

    def is_fresh(self, now: float) -> bool:
        """Whether the writer still counts as alive at ``now`` (epoch seconds)."""
        return now - self.ts <= MISSED_BEATS * self.interval_s


class DiskTierCounters(BaseModel):
    """A replica's use of its node's disk tier (remote adapters), since it started."""

    model_config = ConfigDict(extra="ignore")

    hits: int = Field(0, ge=0, description="Adapter folders found on the node's disk.")
    misses: int = Field(0, ge=0, description="Adapter folders not there (or damaged).")
    downloads: int = Field(0, ge=0, description="Adapter folders downloaded by this replica.")
    download_bytes: int = Field(0, ge=0, description="Bytes this replica downloaded.")
    download_failures: int = Field(0, ge=0, description="Downloads given up on.")
    download_s_total: float = Field(0.0, ge=0, description="Seconds spent downloading.")
    evictions: int = Field(0, ge=0, description="Entries this replica deleted for room.")
    corrupt_entries: int = Field(0, ge=0, description="Damaged entries found (fetched again).")
    bytes_used: int = Field(0, ge=0, description="Bytes on the node's disk tier, last seen.")


class BackendStats(BaseModel):
    """Counters of a replica's backend since it started (``cache_*``: the device tier;
    ``host_*``: parsed adapters in host memory). A backend that cannot see a figure
    (vLLM's passes and tiers) leaves it 0."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    forward_passes: int = Field(0, ge=0, description="Forward passes run.")
    multi_adapter_passes: int = Field(0, ge=0, description="Passes of two adapters or more.")
    max_adapters_in_pass: int = Field(0, ge=0, description="Most adapters in one pass.")
    max_rows_in_pass: int = Field(0, ge=0, description="Most rows in one pass.")
    row_steps: int = Field(0, ge=0, description="Rows summed over passes.")
    rows: int = Field(0, ge=0, description="Generation rows started.")
    tokens_generated: int = Field(0, ge=0, description="Tokens generated.")
    rows_in_flight: int = Field(0, ge=0, description="Generation rows running now.")
    cache_hits: int = Field(0, ge=0, description="Adapter requests served warm.")
    cache_loads: int = Field(0, ge=0, description="Adapter loads onto the device.")
    cache_load_failures: int = Field(0, ge=0, description="Adapter loads that failed.")
    cache_evictions: int = Field(0, ge=0, description="Adapter evictions from the device.")
    adapter_load_ms_total: float = Field(0.0, ge=0, description="Milliseconds loading adapters.")
    adapters_loaded: int = Field(0, ge=0, description="Adapters on the device now.")
    host_hits: int = Field(0, ge=0, description="Adapters found parsed in host memory.")
    host_loads: int = Field(0, ge=0, description="Adapters read from disk into host memory.")
    host_load_failures: int = Field(0, ge=0, description="Host reads that failed.")
    host_evictions: int = Field(0, ge=0, description="Adapters dropped from host memory.")
    host_bytes: int = Field(0, ge=0, description="Bytes of parsed adapters in host memory now.")
    adapters_on_host: int = Field(0, ge=0, description="Adapters in host memory now.")
    host_load_ms_total: float = Field(
        0.0, ge=0, description="Milliseconds spent reading adapters into host memory."
    )
    device_copies: int = Field(0, ge=0, description="Copies of adapters into device slots.")
    device_copy_ms_total: float = Field(
        0.0, ge=0, description="Milliseconds spent copying adapters into device slots."
    )
    model_thread_disk_reads: int = Field(
        0, ge=0, description="Adapter folders read on the model thread (PEFT loads)."
    )
    peft_load_ms_total: float = Field(0.0, ge=0, description="Milliseconds in PEFT loads.")
    adapters_removed: int = Field(0, ge=0, description="Adapters unregistered and dropped.")
    in_use_evictions: int = Field(
        0, ge=0, description="Adapters taken off the device while in use (a bug if above 0)."
    )


class WithBackendStats(BaseModel):
    """A record that embeds a replica's :class:`BackendStats` as ``backend`` and, for
    readers of the flat form it replaced, also writes ``flat_fields`` of it at the top level
    (and reads a record that has only those)."""

    flat_fields: ClassVar[tuple[str, ...]] = FLAT_BACKEND_FIELDS

    backend: BackendStats = Field(
        default_factory=BackendStats,
        description="The backend's counters since the replica started.",
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_flat_counters(cls, data: Any) -> Any:
        # A record from an older replica has its counters at the top level.
        if isinstance(data, dict) and "backend" not in data:
            flat = {name: data[name] for name in cls.flat_fields if name in data}
            return {**data, "backend": flat}
        return data

    @model_serializer(mode="wrap")
    def _with_flat_counters(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields: dict[str, Any] = handler(self)
        return {**self.backend.model_dump(include=set(self.flat_fields)), **fields}


class ReplicaHeartbeat(Heartbeat, WithBackendStats):
    """One model replica's status at ``ts``; the field of ``{P}:replicas`` is ``replica``."""

    replica: str = Field(min_length=1, description="Serve replica id.")
    node: str = Field("", description="Ray node id the replica runs on.")
    adapters: list[str] = Field(
        default_factory=list, description="Adapters on the device, least recently used first."
    )
    # v1.4: what the consumers' planners read (None from an older replica).
    slots: int | None = Field(None, ge=1, description="Device adapter slots (v1.4).")
    free_slots: int | None = Field(
        None, ge=0, description="Device slots holding no adapter now (v1.4)."
    )
    adapters_in_flight: list[str] = Field(
        default_factory=list, description="Adapters of the requests it runs or admits now (v1.4)."
    )
    disk: DiskTierCounters = Field(
        default_factory=DiskTierCounters,
        description="The node's disk tier, as this replica saw it.",
    )

    @property
    def name(self) -> str:
        """The replica id."""
        return self.replica


class ReplicaStats(WithBackendStats):
    """A model replica's answer to ``stats()`` through its Serve handle: flat by name for
    operators and tests (every backend counter at the top level), read back typed."""

    flat_fields: ClassVar[tuple[str, ...]] = tuple(BackendStats.model_fields)

    replica: str = Field(min_length=1, description="Serve replica id.")
    pid: int = Field(description="The replica's process (for operators and chaos tests).")
    adapters: list[str] = Field(default_factory=list, description="Adapters on the device.")
    host_adapters: list[str] = Field(
        default_factory=list, description="Adapters parsed in host memory."
    )
    disk: DiskTierCounters = Field(default_factory=DiskTierCounters)
    max_adapters_in_flight: int = Field(
        0,
        ge=0,
        description="The most distinct adapters its requests used at one moment, since start.",
    )
    group_calls: int = Field(0, ge=0, description="Grouped streaming calls served.")
    group_requests: int = Field(0, ge=0, description="Requests in those calls.")
    group_cancels: int = Field(0, ge=0, description="Requests of those calls cancelled.")


class ConsumerHeartbeat(Heartbeat):
    """One consumer's status at ``ts``; the field of ``{P}:consumers`` is ``consumer``."""

    consumer: str = Field(min_length=1, description="Consumer name in the group.")
    in_flight: int = Field(0, ge=0, description="Jobs it runs now.")
    # None for the window figures: the consumer runs with the window off.
    window_depth: int | None = Field(
        None, ge=0, description="Claimed jobs waiting in its scheduling window."
    )
    window_oldest_wait_s: float | None = Field(
        None, ge=0, description="How long the job waiting longest in the window has waited."
    )
    window_max_wait_s: float | None = Field(
        None, ge=0, description="The longest a started job waited in the window (since start)."
    )
    replicas_known: int = Field(0, ge=0, description="Model replicas its scheduler sees.")
    tenants: dict[str, TenantFigures] = Field(
        default_factory=dict,
        description="Its window's figures per tenant ('(default)': jobs without one) (v1.4).",
    )

    @property
    def name(self) -> str:
        """The consumer name."""
        return self.consumer
