"""Worker-side settings (environment prefix ``LORAQ_``, ``.env`` supported).

Every field here is documented in the README's configuration table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from typing_extensions import Self

from producer.settings import DEMO_DIR, AdapterRootSettings
from schemas.adapter_uris import parse_adapter_uri
from workers.queue.tenant_labels import DEFAULT_LABELS_MAX
from workers.scheduling.fairness import parse_weights
from workers.setting_rules import broken_rules

DEFAULT_DEAD_MAXLEN = 100_000


class WorkerSettings(AdapterRootSettings):
    """Everything a worker (engine, Serve app) reads; a superset of the client settings."""

    model_config = SettingsConfigDict(env_prefix="LORAQ_", env_file=".env", extra="ignore")

    # Base model
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="Inference backend of the model replicas: hf (transformers/PEFT, any HF "
        "model, bitsandbytes, every PEFT LoRA type) or vllm (needs the vllm extra).",
    )
    model: str = Field(str(DEMO_DIR / "model"), description="Base model name or path.")
    vllm_kv_cache_gb: float | None = Field(
        None,
        gt=0,
        description="GiB of KV cache each vLLM replica reserves (vLLM's kv_cache_memory_bytes). "
        "Unset: 2 on a CPU, where vLLM's own default asks for most of the node's memory and "
        "a replica on a small machine cannot start; on a GPU vLLM's share of its memory. "
        "VLLM_CPU_KVCACHE_SPACE, when set, still wins on a CPU.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype: auto, float32, float16, bfloat16."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda.")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes quantization: none, 8bit, 4bit."
    )
    trust_remote_code: bool = Field(False, description="Passed to from_pretrained.")

    # Adapters (adapters and adapter_dir come from AdapterRootSettings)
    max_adapters_per_replica: int = Field(
        8, ge=1, description="Adapters held on the device per replica (LRU, in-use ones pinned)."
    )
    max_lora_rank: int = Field(64, ge=1, description="Adapters of a higher rank are refused.")
    adapter_host_cache_mb: int = Field(
        2048,
        ge=0,
        description="Host memory (MiB) for parsed adapters per replica (LRU, in-use ones pinned).",
    )
    registry_sync_s: float = Field(
        2.0,
        gt=0,
        description="How long a replica trusts what it resolved for a name: a registration "
        "re-pointed or removed, or a new object at an adapter's URI, reaches every job that "
        "starts later than this, and the old bytes leave every tier once unused (one that "
        "nobody uses again: by its tier's LRU).",
    )
    adapter_relist_s: float = Field(
        300.0,
        ge=0,
        description="How often a remote adapter folder in use is listed again in full. In "
        "between, every LORAQ_REGISTRY_SYNC_S, each of its files already known is checked by "
        "a HEAD (size and ETag or version): a file replaced or deleted is seen within the "
        "sync bound, a file added beside unchanged ones within this (or the sync bound, if "
        "longer). 0: a listing every time.",
    )
    adapter_source: str | None = Field(
        None,
        description="Source root of adapters nothing else names: a job's adapter NAME is "
        "looked up at <source>/NAME/ on first use (s3://bucket/prefix, gs://…, az://…, "
        "hf://org/repo[@revision], https://host/folder). Needs the matching extra.",
    )
    adapter_disk_cache_dir: str = Field(
        "~/.cache/loraq/adapters",
        description="The node's disk tier for remote adapters, shared by its replicas and "
        "kept across restarts.",
    )
    adapter_disk_cache_mb: int = Field(
        10240, ge=1, description="Disk tier budget (MiB), least recently used out first."
    )
    max_adapter_mb: int = Field(
        1024, ge=1, description="A remote adapter folder larger than this (MiB) is refused."
    )
    adapter_download_concurrency: int = Field(
        16, ge=1, description="Downloads (and listings) of remote adapters at once per replica."
    )
    adapter_download_timeout_s: float = Field(
        30.0, gt=0, description="Connect and read timeout of one call to an adapter store."
    )
    adapter_download_attempts: int = Field(
        3,
        ge=1,
        description="Tries of a store call before the job fails adapter_unavailable "
        "(and is retried by the queue).",
    )
    adapter_miss_ttl_s: float = Field(
        10.0, ge=0, description="How long a name the source root lacks is remembered."
    )

    @field_validator("tenant_weights")
    @classmethod
    def _weights_parse(cls, value: str) -> str:
        parse_weights(value)  # refused at start, naming the bad pair
        return value

    @property
    def tenant_weight_map(self) -> dict[str, float]:
        """:attr:`tenant_weights` by tenant."""
        return parse_weights(self.tenant_weights)

    @field_validator("adapter_source")
    @classmethod
    def _source_is_a_uri(cls, value: str | None) -> str | None:
        # Refused at start, in the setting's own words, rather than at the first job.
        if value:
            parse_adapter_uri(value)
        return value or None

    # Batching and limits
    max_batch_size: int = Field(16, ge=1, description="Rows in one forward pass.")
    batch_wait_ms: float = Field(
        5.0, ge=0, description="How long the batcher waits to fill a batch."
    )
    max_input_tokens: int = Field(2048, ge=1, description="Longer prompts fail validation.")
    max_new_tokens: int = Field(512, ge=1, description="Cap on a job's max_new_tokens.")
    max_schema_bytes: int = Field(
        16_384,
        ge=1,
        le=65_536,
        description="A response_format larger than this as JSON (bytes) fails validation "
        "(the protocol's own cap is 65536).",
    )
    grammar_compile_timeout_s: float = Field(
        5.0,
        gt=0,
        description="A response_format whose grammar takes longer to compile fails "
        "validation (compiles run off the model thread, so other rows keep going).",
    )
    grammar_cache_size: int = Field(
        256, ge=1, description="Compiled response_format grammars a replica keeps (LRU)."
    )
    compile_decoder: bool = Field(
        False,
        description="torch.compile the model's decoder (dynamic shapes): the first passes "
        "compile for about a minute on a CPU, then faster steps, the same tokens "
        "(figures in docs/SERVING.md).",
    )
    cpu_packed_linears: bool = Field(
        True,
        description="On a CPU, keep float32 linear weights in oneDNN's packed layout "
        "(faster products from a few rows up; figures in docs/SERVING.md); an output layer "
        "tied to the input embedding gets a packed copy of its own (the vocabulary matrix "
        "twice in memory). Off, or with compile_decoder: dense column-major. Undone for good "
        "once an adapter needs PEFT's path.",
    )
    cpu_lora_kernel: bool = Field(
        True,
        description="On a CPU, add the stacked adapters' deltas (float32) through loraq's "
        "kernel, built ahead in the image, else by gcc at start: each adapter read once a "
        "pass, no gather or scatter of rows. Off, or with neither a built kernel nor gcc: "
        "two bmm calls per module.",
    )
    decode_attention: bool = Field(
        True,
        description="On a CPU model, run one-token attention through loraq's decode "
        "attention: in float32 a kernel built ahead in the image, else by gcc at start "
        "(figures in docs/SERVING.md); in other dtypes SDPA with a GQA model's query heads "
        "grouped by kv head (no copy of the cache per query head). A CUDA model keeps "
        "transformers' attention. Off, or with compile_decoder: SDPA.",
    )

    # Serve application
    app_name: str = Field("loraq", min_length=1, description="Serve application name.")
    num_model_replicas: int = Field(1, ge=1, description="LoRAModel replicas.")
    max_start_failures: int = Field(
        3,
        ge=1,
        description="Failed starts of LoRAModel replicas in a row after which loraq serve "
        "stops the application with their cause.",
    )
    num_consumer_replicas: int = Field(1, ge=1, description="JobConsumer replicas.")
    model_num_cpus: float = Field(1.0, ge=0, description="Ray CPUs per LoRAModel replica.")
    model_num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per LoRAModel replica.")
    consumer_num_cpus: float = Field(0.25, ge=0, description="Ray CPUs per JobConsumer replica.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a LoRAModel replica takes at once (Serve's limit)."
    )
    affinity_routing: bool = Field(
        True, description="Send the adapter as Serve's multiplexed model id (adapter affinity)."
    )
    http_host: str = Field("127.0.0.1", description="Serve HTTP host.")
    http_port: int = Field(8000, ge=0, le=65535, description="Serve HTTP port.")
    graceful_shutdown_timeout_s: float = Field(
        30.0, gt=0, description="Time in-flight jobs get to finish when a replica stops."
    )
    metrics_export_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Port of Ray's Prometheus endpoint (/metrics) when loraq serve starts Ray "
        "(0: any free port); nodes of a cluster use ray start --metrics-export-port.",
    )
    metrics_interval_s: float = Field(
        5.0, gt=0, description="How often replicas update the queue, in-flight and engine metrics."
    )

    # Autoscaling of the LoRAModel deployment on the queue backlog
    autoscale: bool = Field(
        False,
        description="Scale LoRAModel replicas on the queue backlog (group lag + pending) "
        "between min_model_replicas and max_model_replicas; num_model_replicas is then unused.",
    )
    min_model_replicas: int = Field(1, ge=1, description="Fewest LoRAModel replicas (autoscale).")
    max_model_replicas: int = Field(4, ge=1, description="Most LoRAModel replicas (autoscale).")
    target_backlog_per_replica: float = Field(
        32.0, gt=0, description="Jobs waiting or running that one LoRAModel replica should carry."
    )
    scale_up_delay_s: float = Field(
        10.0, ge=0, description="How long the backlog must ask for more replicas before they start."
    )
    scale_down_delay_s: float = Field(
        120.0,
        ge=0,
        description="How long the backlog must ask for fewer replicas before some stop.",
    )
    autoscale_metrics_interval_s: float = Field(
        10.0, gt=0, description="How often model replicas send their backlog readings to Serve."
    )
    max_model_replicas_per_node: int | None = Field(
        None,
        ge=1,
        le=100,
        description="Most LoRAModel replicas on one Ray node (1 spreads them over the nodes).",
    )

    # Queue consumer
    max_in_flight: int = Field(32, ge=1, description="Jobs one consumer replica runs at once.")
    read_block_ms: int = Field(500, ge=1, description="XREADGROUP BLOCK time of the consumer.")
    visibility_timeout_s: float = Field(
        30.0, gt=0, description="Idle time after which another consumer reclaims an entry."
    )
    lease_renew_s: float = Field(5.0, gt=0, description="How often a consumer renews leases.")
    cancel_poll_s: float = Field(
        0.5, gt=0, description="How often a consumer looks for cancel requests of running jobs."
    )
    schedule_window: int = Field(
        256,
        ge=0,
        description="Claimed jobs a consumer holds to choose from (adapter-aware scheduling), "
        "of each tenant when max_claimed_jobs is larger; 0 turns the window off: jobs start "
        "in stream order, as claimed.",
    )
    max_claimed_jobs: int = Field(
        0,
        ge=0,
        description="Jobs a consumer holds claimed in all, several tenants' together (0: "
        "schedule_window). Fair shares act on claimed jobs: above schedule_window a "
        "tenant's jobs behind another's backlog in the stream are seen sooner, and the "
        "scheduler still looks at each tenant's first schedule_window jobs.",
    )
    max_passover_s: float = Field(
        5.0,
        gt=0,
        description="Aging bound of the window: no job is passed over for longer than this.",
    )
    tenant_weights: str = Field(
        "",
        description="Weights of tenants' shares of generated tokens within one priority, "
        "'a=2,b=1'; a tenant not named (and jobs without a tenant) weighs 1.",
    )
    tenant_headroom: int = Field(
        0,
        ge=0,
        description="In-flight places of each consumer kept free for a tenant running "
        "fewer jobs than its weighted share while another tenant has jobs: its job starts "
        "at once, joining a replica's running batch, instead of waiting for another "
        "tenant's job to end; a tenant alone leaves them idle. 0 (the default): none, the "
        "scheduler is work-conserving; 1 for fleets shared by tenants with short waits.",
    )
    tenant_max_in_flight: int = Field(
        0,
        ge=0,
        description="Jobs of one tenant running at once, over all consumers (each holds "
        "its share); more wait in the windows; 0: no limit.",
    )
    tenant_labels_max: int = Field(
        DEFAULT_LABELS_MAX,
        ge=0,
        description="Tenants a consumer shows under their own name in its metrics and "
        "heartbeat beyond those LORAQ_TENANT_WEIGHTS names (and the default tenant): the "
        "first it sees; later ones are counted together as '(other)'.",
    )
    max_dispatch_group: int = Field(
        32,
        ge=1,
        description="Jobs a consumer sends to a model replica in one handle call, at most; "
        "1 sends each job in a call of its own.",
    )
    dispatch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a consumer collects jobs for one handle call; 0: the jobs "
        "started in the same event-loop tick.",
    )
    max_attempts: int = Field(3, ge=1, description="Deliveries of a job before it is dead.")
    retry_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each try.")
    max_retry_backoff_s: float = Field(10.0, ge=0, description="Cap on the retry delay.")
    trim_interval_s: float = Field(
        60.0, gt=0, description="How often a consumer trims acknowledged entries of {P}:jobs."
    )
    events_maxlen: int = Field(100_000, ge=1, description="Approximate cap of {P}:events.")
    dead_maxlen: int = Field(
        DEFAULT_DEAD_MAXLEN, ge=1, description="Approximate cap of {P}:dead (MAXLEN ~)."
    )
    dead_payload_max_bytes: int = Field(
        8192,
        ge=256,
        description="A dead letter keeps at most this many bytes of the job's payload.",
    )
    stream_chunk_ms: float = Field(
        50.0, ge=0, description="Text is streamed in chunks at most this often per job."
    )
    stream_chunk_tokens: int = Field(
        4, ge=1, description="A streamed chunk holds at least this many tokens (unless last)."
    )
    stream_chunk_chars: int = Field(
        64, ge=1, description="A chunk is sent early once it holds this many characters."
    )

    # Observability
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often a model replica writes its status to {P}:replicas."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Worker log level; lines about single jobs are DEBUG."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Worker logs as text, or one JSON object per line."
    )

    # HTTP gateway
    http_route_prefix: str = Field(
        "/", pattern=r"^/", description="Path under which Serve's proxy exposes the gateway."
    )
    num_gateway_replicas: int = Field(1, ge=1, description="Gateway (HTTP ingress) replicas.")
    gateway_num_cpus: float = Field(0.1, ge=0, description="Ray CPUs per gateway replica.")
    gateway_max_ongoing_requests: int = Field(
        512, ge=1, description="HTTP requests a gateway replica holds at once (waits included)."
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys; when set, every HTTP endpoint but /healthz and "
        "/readyz needs 'Authorization: Bearer <key>'.",
    )
    admin_api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated admin keys: accepted like api_keys, and they read, wait "
        "on and cancel every job (other keys only their own).",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest HTTP request body; larger ones get 413."
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive whole within this (408 after it)."
    )
    http_keep_alive_timeout_s: int = Field(
        5,
        ge=1,
        description="Serve's HTTP proxy closes a connection idle this long after a response "
        "(Serve's keep_alive_timeout_s) when loraq serve starts Serve.",
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Serve's HTTP proxy closes a connection whose request headers are not "
        "whole this long after it opened or after its last response (slow or silent "
        "clients), when loraq serve starts Serve.",
    )
    served_model_name: str | None = Field(
        None, min_length=1, description="The base model's name in the OpenAI API (default: model)."
    )
    http_max_wait_s: float = Field(
        300.0, gt=0, description="Longest wait of GET /v1/jobs/{id}/wait (longer are shortened)."
    )
    http_redis_timeout_s: float = Field(
        2.0, gt=0, description="Redis connect/read timeout of the gateway's queue endpoints."
    )
    http_docs_public: bool = Field(
        False,
        description="Keep /docs and /openapi.json open without a key when api_keys are set.",
    )

    # OpenAI Batch API (/v1/files, /v1/batches)
    max_file_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest file POST /v1/files takes (else 413)."
    )
    max_batch_lines: int = Field(
        50_000, ge=1, description="Most lines of one batch input file (else 400)."
    )
    file_ttl_s: int = Field(
        7 * 86400, ge=1, description="Uploaded files are deleted this long after upload."
    )
    batch_ttl_s: int = Field(
        7 * 86400,
        ge=1,
        description="A batch, its output and error files and its jobs' records are deleted "
        "this long after the batch is created.",
    )
    batch_priority: int = Field(
        -10,
        ge=-1000,
        le=1000,
        description="priority of a batch's jobs (interactive jobs have 0: higher runs first).",
    )

    @model_validator(mode="after")
    def _combinations_work(self) -> Self:
        # At start, naming both settings, rather than as reclaimed jobs under load.
        problems = broken_rules(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def base_model_name(self) -> str:
        """The base model's name in the OpenAI-compatible API: ``served_model_name``, or
        the model's folder name when ``model`` is a path here (a server path is not for
        clients to see), else the hub id as given."""
        if self.served_model_name:
            return self.served_model_name
        path = Path(self.model)
        return path.name if path.is_absolute() or path.exists() else self.model
