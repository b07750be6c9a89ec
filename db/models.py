"""Tables: tenants, API keys, jobs, their stages and artifacts, search embeddings, webhooks, idempotency."""

import enum
import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.statuses import JobStatus, StageStatus
from db.base import Base, Created, JSONDict, Timestamp, UUIDPk


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # VARCHAR + CHECK rather than a native enum: adding a value stays a one-line migration.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint("max_priority BETWEEN 0 AND 9", name="max_priority_range"),)

    id: Mapped[UUIDPk]
    name: Mapped[str] = mapped_column(String(100), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    # Quotas: NULL takes the deployment's default (IMAGEN_DEFAULT_*); a value <= 0 means unlimited.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_jobs_in_flight: Mapped[int | None] = mapped_column(Integer)
    # The highest job priority the tenant may ask for (0..9); NULL takes IMAGEN_DEFAULT_MAX_PRIORITY.
    max_priority: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[Created]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[UUIDPk]
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # Only a SHA-256 of the key is kept; the key itself is shown once, when it is created.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[Created]
    revoked_at: Mapped[Timestamp]

    tenant: Mapped[Tenant] = relationship(lazy="joined")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority_range"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        # The sweeper scans only live jobs.
        Index("ix_jobs_active", "status", postgresql_where=text("status IN ('queued', 'running')")),
        # The jobs-in-flight quota counts a tenant's live jobs on every submission.
        Index("ix_jobs_tenant_in_flight", "tenant_id", postgresql_where=text("status IN ('queued', 'running')")),
        # The sweeper looks up which stored uploads jobs still refer to (caption and index jobs).
        Index(
            "ix_jobs_input_image_key",
            text("(input -> 'image' ->> 'key')"),
            postgresql_where=text("input ? 'image'"),
        ),
        # The sweeper's retention passes: finished jobs that still hold everything, or their intermediates.
        Index(
            "ix_jobs_finished_kept",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL AND deleted_at IS NULL"),
        ),
        Index(
            "ix_jobs_finished_with_intermediates",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL AND deleted_at IS NULL AND intermediates_purged_at IS NULL"),
        ),
        # Deletions the object store interrupted, which the sweeper finishes.
        Index("ix_jobs_unpurged", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL AND purged_at IS NULL")),
    )

    id: Mapped[UUIDPk]
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.QUEUED)
    preset: Mapped[str] = mapped_column(String(64))
    input: Mapped[JSONDict]
    meta: Mapped[JSONDict] = mapped_column("metadata")
    priority: Mapped[int] = mapped_column(Integer, default=5)
    error: Mapped[str | None] = mapped_column(Text)
    # {"url": ..., "events": [...]} when the client asked for webhooks.
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Each (re-)enqueue of the chain bumps dispatch_seq; tasks carrying an older number are stale
    # duplicates (a broker redelivery racing the sweeper) and stop without doing anything.
    dispatch_seq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # The sequence number of the job's latest webhook event: each event takes the next one, in the
    # transaction that records it, so a receiver can order a job's events however they arrive.
    webhook_seq: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # The id of the request that submitted the job and, when tracing is on, its W3C traceparent: every
    # message that sends the job on carries them, so that each stage's log lines name the request and its
    # spans join the request's trace (core/logs.py, core/tracing.py).
    request_id: Mapped[str | None] = mapped_column(String(64))
    traceparent: Mapped[str | None] = mapped_column(String(64))
    dispatched_at: Mapped[Timestamp]
    created_at: Mapped[Created]
    started_at: Mapped[Timestamp]
    finished_at: Mapped[Timestamp]
    # Deleted: a tombstone (its id is never used again). Purged: everything it stored is gone; a deletion the
    # object store interrupted has the first without the second, and the sweeper finishes it.
    deleted_at: Mapped[Timestamp]
    purged_at: Mapped[Timestamp]
    # Its non-final images and prompt embeddings are gone (retention); a retry then runs every stage again.
    intermediates_purged_at: Mapped[Timestamp]

    stages: Mapped[list["JobStage"]] = relationship(
        back_populates="job", order_by="JobStage.position", cascade="all, delete-orphan", lazy="selectin"
    )
    artifacts: Mapped[list["Artifact"]] = relationship(
        order_by=lambda: (Artifact.stage, Artifact.index), cascade="all, delete-orphan", lazy="selectin"
    )

    def stage(self, name: str) -> "JobStage":
        """The stage row called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"job {self.id} has no stage {name!r}")


class JobStage(Base):
    __tablename__ = "job_stages"
    __table_args__ = (
        UniqueConstraint("job_id", "name"),
        # A worker gathering companions for a batch looks up the pending runs of one stage.
        Index(
            "ix_job_stages_pending_name",
            "name",
            "queued_at",
            postgresql_where=text("status = 'pending' AND queued_at IS NOT NULL"),
        ),
    )

    id: Mapped[UUIDPk]
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(32))
    status: Mapped[StageStatus] = mapped_column(_enum(StageStatus, "stage_status"), default=StageStatus.PENDING)
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)
    outputs: Mapped[list[Any]] = mapped_column(JSONB, default=list, server_default="[]")
    queued_at: Mapped[Timestamp]
    started_at: Mapped[Timestamp]
    finished_at: Mapped[Timestamp]
    heartbeat_at: Mapped[Timestamp]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # Runs that shared a forward pass carry the stage id of the run that led it, and the pass's image count.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    # The dispatch generation whose run completed the stage and sent the job on to its next stage.
    completed_seq: Mapped[int | None] = mapped_column(Integer)

    job: Mapped[Job] = relationship(back_populates="stages")


class Artifact(Base):
    __tablename__ = "artifacts"
    # One row per stored object: a redelivered stage cannot record its output twice.
    __table_args__ = (UniqueConstraint("job_id", "stage", "index"),)

    id: Mapped[UUIDPk]
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(32))
    index: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[Created]


class Embedding(Base):
    """One indexed image in a tenant's collection: its vector in the embedder's space, and what it shows.

    Vectors of different models (or dimensions) share the table but never a query: every search filters
    on ``model`` and ``dim``, and each (model, dim) has its own partial HNSW index over
    ``embedding::vector(dim)`` (see ``db.search.ensure_vector_index``).
    """

    __tablename__ = "embeddings"
    __table_args__ = (
        # A redelivered embed stage updates its row instead of adding a second one.
        UniqueConstraint("job_id", "image_key", "collection"),
        Index("ix_embeddings_scope", "tenant_id", "collection", "model", "dim"),
    )

    id: Mapped[UUIDPk]
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    collection: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[list[float]] = mapped_column(Vector())
    text_embedding: Mapped[list[float] | None] = mapped_column(Vector())
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    image_key: Mapped[str] = mapped_column(String(512))
    caption: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[JSONDict] = mapped_column("metadata")
    created_at: Mapped[Created]


class WebhookEvent(Base):
    """The outbox: one event of one job for its webhook, written in the transaction of the state change.

    Its id is the ``webhook-id`` (stable across retries); its payload is frozen when the event happens,
    except for image URLs, which each attempt signs afresh from ``image_keys`` (see core.webhook_payload).
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        # The delivery sweeper scans only events still to deliver.
        Index("ix_webhook_events_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        UniqueConstraint("job_id", "sequence"),
    )

    id: Mapped[UUIDPk]
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    # 1, 2, 3, ... among the job's events, in the order they happened (also in the payload).
    sequence: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[JSONDict]
    # [[path in the payload, object key], ...]: where each attempt puts a freshly presigned image URL.
    image_keys: Mapped[list[Any]] = mapped_column(JSONB, default=list, server_default="[]")
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_at: Mapped[Created]
    delivered_at: Mapped[Timestamp]
    # Set while a deliverer makes an attempt (no lock is held across its HTTP call): only the holder of
    # the token may record the outcome, and an expired lease (a dead deliverer) may be taken again.
    lease_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[Timestamp]

    # The HTTP attempts, oldest first (``attempts`` above counts those of the current schedule only:
    # a manual redelivery restarts it and keeps this log).
    attempt_log: Mapped[list["WebhookAttempt"]] = relationship(
        order_by="WebhookAttempt.attempted_at", passive_deletes=True
    )


class WebhookAttempt(Base):
    """One HTTP attempt at delivering an event: when, what came back, how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[UUIDPk]
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[Created]
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key``: the job it created and a hash of the request that created it."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[UUIDPk]
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[Created]
