"""Every Redis key of wire protocol v1, spelled in one place.

`{P}` in the protocol is the prefix. A prefix wrapped in braces (``{loraq}``) makes every
key hash to one Redis Cluster slot, which the multi-key Lua scripts need there.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "loraq"


@dataclass(frozen=True)
class Keys:
    """The key layout for one prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def jobs(self) -> str:
        """Stream of submitted jobs (field ``job`` = job JSON)."""
        return f"{self.prefix}:jobs"

    @property
    def group(self) -> str:
        """Consumer group on :attr:`jobs`; its members are the consumers (named so since v1.0)."""
        return f"{self.prefix}:workers"

    @property
    def events(self) -> str:
        """Capped stream with one entry per status change of any job."""
        return f"{self.prefix}:events"

    @property
    def dead(self) -> str:
        """Dead-letter stream."""
        return f"{self.prefix}:dead"

    @property
    def adapters(self) -> str:
        """Hash of adapters registered at run time: name -> JSON ``{"path": ...}``."""
        return f"{self.prefix}:adapters"

    @property
    def replicas(self) -> str:
        """Hash of model replicas' heartbeats: replica id -> JSON status (informational)."""
        return f"{self.prefix}:replicas"

    @property
    def consumers(self) -> str:
        """Hash of consumers' heartbeats: consumer name -> JSON status (informational)."""
        return f"{self.prefix}:consumers"

    @property
    def model_starts(self) -> str:
        """Hash of the model replicas' failed starts since one last started (v1.4):
        ``failures``, ``cause``, ``replica``, ``ts`` (informational, for operators)."""
        return f"{self.prefix}:model:starts"

    @property
    def slots(self) -> str:
        """Hash of the jobs in flight on each model replica, per consumer and adapter:
        ``<replica>\\t<holder>\\t<adapter>`` -> count (the slot lease, v1.4)."""
        return f"{self.prefix}:slots"

    @property
    def slot_holders(self) -> str:
        """Hash of the consumers that hold slots: holder -> lease expiry, epoch ms (v1.4)."""
        return f"{self.prefix}:slot_holders"

    def tenant_rate(self, tenant: str) -> str:
        """A tenant's token bucket (v1.4): ``tokens`` and ``ts`` (ms), written by the
        enqueue script when a rate per tenant is set ("" is the default tenant)."""
        return f"{self.prefix}:tenant:{tenant}:rate"

    def job(self, job_id: str) -> str:
        """Hash holding one job's record."""
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """Stream of one job's status changes and text chunks."""
        return f"{self.prefix}:job:{job_id}:events"

    def cancel(self, job_id: str) -> str:
        """String whose presence asks for the job to be cancelled."""
        return f"{self.prefix}:cancel:{job_id}"

    @property
    def batches(self) -> str:
        """Sorted set of batch ids by creation time (epoch s), for listing."""
        return f"{self.prefix}:batches"

    @property
    def open_batches(self) -> str:
        """Sorted set of the batch ids that have not ended, by creation time: what the
        gateway's sweep moves on (added in v1.4)."""
        return f"{self.prefix}:batches:open"

    def owner_batches(self, owner: str) -> str:
        """Sorted set of one API key's batch ids by creation time: its listing reads no
        other key's batches."""
        return f"{self.prefix}:batches:owner:{owner}"

    def batch(self, batch_id: str) -> str:
        """Hash holding one batch (OpenAI Batch API): ``batch`` JSON, ``status``, ``owner``."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_lines(self, batch_id: str) -> str:
        """List of one batch's lines (JSON each: ``custom_id``, ``model``, and ``job_id``
        or ``error``), in input order; read in slices."""
        return f"{self.prefix}:batch:{batch_id}:lines"

    def batch_counts(self, batch_id: str) -> str:
        """Hash of one batch's request counts per slice of its lines (``"completed failed
        pending"``), and ``next``, the slice the next read starts from."""
        return f"{self.prefix}:batch:{batch_id}:counts"

    def batch_queuer(self, batch_id: str) -> str:
        """String with a TTL: present while a gateway replica checks and queues the
        batch's lines (renewed at each slice); gone, the next read takes the work over."""
        return f"{self.prefix}:batch:{batch_id}:queuer"

    def batch_finalizer(self, batch_id: str) -> str:
        """String with a TTL: present while a gateway replica writes the batch's files."""
        return f"{self.prefix}:batch:{batch_id}:finalizer"

    def file(self, file_id: str) -> str:
        """Hash holding one file of the Batch API: ``meta`` JSON and ``content`` bytes."""
        return f"{self.prefix}:file:{file_id}"
