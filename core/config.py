"""Settings read from the environment (prefix ``IMAGEN_``)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.address_guard import DEFAULT_ALLOWED_PORTS
from core.limits import DEFAULT_MAX_BATCH, MAX_BATCH


class Settings(BaseSettings):
    """Everything a process of imagen-queue may be configured with."""

    model_config = SettingsConfigDict(env_prefix="IMAGEN_", extra="ignore")

    data_dir: Path = Field(default=Path("~/.imagen-queue").expanduser())
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/imagen"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Object storage: an S3 endpoint (MinIO in compose), or, when unset, a folder under data_dir.
    s3_endpoint: str | None = None
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "imagen"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # Where clients reach the store, when it differs from where the servers do (compose: minio:9000).
    s3_public_endpoint: str | None = None
    presign_ttl_s: int = 3600

    public_url: str = "http://127.0.0.1:8000"
    # Signs the dashboard's sessions and the folder store's URLs; unset, each machine keeps its own in
    # data_dir, which only a single machine (`imagen-queue up`) can share. Production (compose) sets both:
    # with require_secret_key the API refuses to start without it, so replicas never disagree on sessions.
    secret_key: str | None = None
    require_secret_key: bool = False

    model_preset: str = "tiny"
    models_dir: Path | None = None
    # The committed weights the toy preset is assembled from (default: models/toy/ of the checkout).
    toy_weights_dir: Path | None = None
    torch_threads: int | None = None
    # On a GPU too small for a worker's models: keep them in CPU memory and move each onto the GPU only
    # while it runs (diffusers' model CPU offload). Slower; ignored without CUDA.
    cpu_offload: bool = False
    # Images in one denoising forward pass (prompts, for the text encoder): a stage splits a job's
    # num_images into runs of at most this many (each image still from its own seed), and fills a pass up
    # to it with other jobs' waiting runs of the same stage and parameters. 1 runs every image alone, byte
    # for byte as a one-image job would; more is faster but can move a pixel by a level or so (README,
    # "Batched denoising").
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1, le=MAX_BATCH)
    # How long a worker that found companions for a batch waits, once, for more to fill it. A lone run on
    # an idle worker never waits.
    batch_wait_ms: int = Field(default=20, ge=0, le=5000)

    admin_api_key: str | None = None
    # Dashboard sign-in attempts per client address and minute (<= 0: unlimited).
    admin_sign_ins_per_minute: int = 10
    # Outbound requests to client-given URLs refuse loopback, private and link-local addresses unless
    # these are set (local development and tests only): webhook deliveries, and image inputs by URL.
    webhook_allow_private: bool = False
    image_url_allow_private: bool = False
    # The ports those requests may reach on a public host (the allow_private settings lift this too).
    webhook_allowed_ports: list[int] = Field(default_factory=lambda: sorted(DEFAULT_ALLOWED_PORTS))
    image_url_allowed_ports: list[int] = Field(default_factory=lambda: sorted(DEFAULT_ALLOWED_PORTS))
    # Seconds between delivery attempts (each +-20% jitter); after the last one an event ends failed.
    webhook_retry_schedule_s: list[float] = Field(default=[5, 30, 120, 600, 1800, 3600, 10800])
    webhook_timeout_s: float = 10.0
    # Deliveries one webhook worker makes at once: threads that mostly wait on the network, so a few
    # stalled receivers leave the rest free.
    webhook_concurrency: int = Field(default=32, ge=1)

    # Per-tenant quotas, unless the tenant row sets its own; a value <= 0 means unlimited.
    default_requests_per_minute: int = 600
    default_max_jobs_in_flight: int = 100
    # The highest priority (0..9) a tenant may give its jobs unless its row sets its own ceiling. 9 lets any
    # tenant jump the queues; a deployment shared by tenants that do not trust each other sets it lower.
    default_max_priority: int = Field(default=9, ge=0, le=9)
    # Long requests a tenant may hold at once, across every API replica (<= 0: unlimited): ``Prefer: wait``
    # holds past the cap answer at once; event streams and searches past it are a 429.
    max_waits_per_tenant: int = 10
    max_streams_per_tenant: int = 20
    max_searches_per_tenant: int = 4
    # ``Prefer: wait`` holds one API process serves at once, whatever their tenant: each takes one of the
    # process's 40 worker threads, and the other requests need the rest.
    max_waits_per_process: int = 20
    # How often an open event stream checks that its API key is still live: it ends this soon after a revoke.
    stream_key_check_s: float = 15.0
    # How long an API process trusts what it read about an API key: a revoked key, or a changed quota, takes
    # effect within this many seconds (0: look every key up on every request).
    api_key_cache_s: float = 5.0

    max_attempts: int = 3
    sweep_interval_s: float = 15.0
    requeue_after_s: float = 60.0
    # A live job with no running stage that has shown no sign of life for this long (nothing queued,
    # finished or sent) has lost its message: the sweeper sends it again, in the same generation, so a
    # message that was only slow (a long queue) stays valid and runs the stage once.
    stranded_after_s: float = 600.0
    stage_time_limit_s: int = 3600
    # Uploaded images no job refers to (a refused submission's, a deleted job's) are deleted once this
    # old; the sweep looks for them at most this often.
    unused_upload_ttl_s: float = 3600.0
    unused_upload_sweep_s: float = 600.0
    # Retention of finished jobs, in days after they ended (unset: kept until deleted). Intermediate: the
    # non-final stages' images and the prompt embeddings; output: everything, as DELETE /v1/jobs/{id} does.
    retain_intermediate_days: float | None = Field(default=None, gt=0)
    retain_output_days: float | None = Field(default=None, gt=0)
    # Jobs each sweep purges, of each kind (deletions to finish, outputs, intermediates): a backlog after the
    # settings are first set drains over several sweeps instead of holding one for long.
    retention_batch: int = Field(default=50, ge=1)

    # ``json``: one JSON object a log line, each with the request id of the job it is about (core/logs.py).
    log_format: Literal["text", "json"] = "text"
    # An OTLP/HTTP collector (e.g. http://otel-collector:4318): traces of the API, Celery, SQLAlchemy and
    # Redis go there, one trace per job from its submission through every stage. Unset: no tracing.
    otlp_endpoint: str | None = None
    # The service name traces carry; each process adds its role (api, worker, beat).
    otel_service_name: str = "imagen-queue"

    @property
    def resolved_models_dir(self) -> Path:
        """Where preset weights live: ``IMAGEN_MODELS_DIR`` or ``<data_dir>/models``."""
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def objects_dir(self) -> Path:
        """The folder the embedded object store keeps its objects in."""
        return self.data_dir / "objects"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
