"""The heartbeats of the workers: model replicas write theirs to ``{P}:replicas``,
consumers theirs to ``{P}:consumers``. Informational, not part of the job contract (a
client that never reads them loses nothing)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# A worker whose last heartbeat is older than this many intervals is taken as gone.
MISSED_BEATS = 3


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


class ReplicaHeartbeat(Heartbeat):
    """One model replica's status at ``ts``; the field of ``{P}:replicas`` is ``replica``."""

    replica: str = Field(min_length=1, description="Serve replica id.")
    node: str = Field("", description="Ray node id the replica runs on.")
    adapters: list[str] = Field(
        default_factory=list, description="Adapters on the device, least recently used first."
    )
    rows_in_flight: int = Field(0, ge=0, description="Generation rows running now.")
    cache_hits: int = Field(0, ge=0, description="Adapter requests served warm (counter).")
    cache_loads: int = Field(0, ge=0, description="Adapter loads (counter).")
    cache_evictions: int = Field(0, ge=0, description="Adapter evictions (counter).")
    host_hits: int = Field(0, ge=0, description="Adapters found parsed in host memory (counter).")
    host_loads: int = Field(0, ge=0, description="Adapters read from disk into host memory.")
    host_evictions: int = Field(0, ge=0, description="Adapters dropped from host memory.")
    host_bytes: int = Field(0, ge=0, description="Bytes of parsed adapters in host memory now.")
    host_load_ms_total: float = Field(
        0.0, ge=0, description="Milliseconds spent reading adapters into host memory (counter)."
    )
    device_copy_ms_total: float = Field(
        0.0, ge=0, description="Milliseconds spent copying adapters into device slots (counter)."
    )
    model_thread_disk_reads: int = Field(
        0, ge=0, description="Adapter folders read on the model thread (PEFT loads; counter)."
    )
    in_use_evictions: int = Field(
        0, ge=0, description="Adapters taken off the device while in use (a bug if above 0)."
    )
    tokens_generated: int = Field(0, ge=0, description="Tokens generated (counter).")
    disk: DiskTierCounters = Field(
        default_factory=DiskTierCounters,
        description="The node's disk tier, as this replica saw it.",
    )

    @property
    def name(self) -> str:
        """The replica id."""
        return self.replica


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

    @property
    def name(self) -> str:
        """The consumer name."""
        return self.consumer
