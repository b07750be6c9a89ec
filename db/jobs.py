"""Queries and state changes on jobs, stages and artifacts. The caller owns the transaction."""

import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Session, joinedload, raiseload

from core.errors import InvalidInput
from db.models import Artifact, Job, JobStage, JobStatus, StageStatus

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
_SWEEP_LOCK_ID = 0x1A6E  # pg advisory lock: one sweeper at a time across all beat instances


def now() -> datetime:
    return datetime.now(UTC)


def create_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    kind: str,
    preset: str,
    input: dict[str, Any],
    stages: Sequence[tuple[str, str]],
    priority: int = 5,
    meta: dict[str, Any] | None = None,
    webhook: dict[str, Any] | None = None,
    queued_at: datetime | None = None,
    dispatched_at: datetime | None = None,
    request_id: str | None = None,
    traceparent: str | None = None,
) -> Job:
    """A queued job with one pending row per ``(stage name, queue)``, in order; ``queued_at`` is the first
    stage's. Everything is in the INSERTs: nothing is left for an UPDATE at commit."""
    job = Job(
        tenant_id=tenant_id,
        kind=kind,
        preset=preset,
        input=input,
        priority=priority,
        meta=meta or {},
        webhook=webhook,
        status=JobStatus.QUEUED,
        dispatch_seq=1,
        dispatched_at=dispatched_at,
        request_id=request_id,
        traceparent=traceparent,
    )
    job.stages = [
        JobStage(name=name, queue=queue, position=i, status=StageStatus.PENDING, progress=0.0, attempts=0, outputs=[])
        for i, (name, queue) in enumerate(stages)
    ]
    job.stages[0].queued_at = queued_at
    session.add(job)
    session.flush()
    return job


def count_in_flight(session: Session, *, tenant_id: uuid.UUID) -> int:
    """How many of the tenant's jobs are queued or running."""
    # Statuses as literals, so that even a cached generic plan matches the partial index ix_jobs_tenant_in_flight.
    live: BindParameter[list[JobStatus]] = bindparam("live", list(ACTIVE), expanding=True, literal_execute=True)
    query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.in_(live))
    return int(session.scalar(query) or 0)


def get_job(
    session: Session, *, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None, for_update: bool = False
) -> Job | None:
    """The job, or None; with ``tenant_id``, another tenant's job is None too."""
    query = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if for_update:
        query = query.with_for_update()
    return session.scalar(query.execution_options(populate_existing=True))


def get_job_with_stages(session: Session, *, job_id: uuid.UUID, tenant_id: uuid.UUID) -> Job | None:
    """The tenant's job and its stages in one query, or None; its artifacts are left unloaded (reading them
    raises), which is what a client's view of the job needs."""
    query = (
        select(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id)
        .options(joinedload(Job.stages), raiseload(Job.artifacts))
    )
    return session.scalars(query).unique().one_or_none()


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned", field="cursor") from exc


def list_jobs(
    session: Session,
    *,
    tenant_id: uuid.UUID | None,
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    prompt: str | None = None,
) -> tuple[list[Job], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None on the last).

    ``prompt`` matches a substring of the input's prompt, case-insensitively.
    """
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if created_from is not None:
        query = query.where(Job.created_at >= created_from)
    if created_to is not None:
        query = query.where(Job.created_at < created_to)
    if prompt:
        pattern = "%" + prompt.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(Job.input["prompt"].astext.ilike(pattern, escape="\\"))
    if cursor:
        created, job_id = _decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    jobs = list(session.scalars(query))
    if len(jobs) > limit:
        return jobs[:limit], _encode_cursor(jobs[limit - 1])
    return jobs, None


def first_unfinished_stage(job: Job) -> JobStage | None:
    """The stage the cascade has to resume from, or None when every stage succeeded."""
    return next((s for s in job.stages if s.status != StageStatus.SUCCEEDED), None)


def bump_dispatch(job: Job) -> int:
    """Start a new dispatch generation: tasks of older generations become no-ops."""
    job.dispatch_seq += 1
    job.dispatched_at = None
    for stage in job.stages:
        if stage.status == StageStatus.RUNNING:
            stage.status = StageStatus.PENDING
    return job.dispatch_seq


def mark_dispatched(session: Session, *, job_id: uuid.UUID, seq: int) -> None:
    """Record that generation ``seq`` of the job's chain reached the broker."""
    session.execute(update(Job).where(Job.id == job_id, Job.dispatch_seq == seq).values(dispatched_at=now()))


def unmark_dispatched(session: Session, *, job_id: uuid.UUID, seq: int) -> None:
    """Take back a record of dispatch made before the send, which then failed: the sweeper sends the job."""
    session.execute(update(Job).where(Job.id == job_id, Job.dispatch_seq == seq).values(dispatched_at=None))


def mark_stage_running(job: Job, stage: JobStage) -> None:
    """Count an attempt and mark the stage (and the job, on its first stage) running."""
    t = now()
    stage.status = StageStatus.RUNNING
    stage.attempts += 1
    stage.started_at = t
    stage.heartbeat_at = t
    stage.progress = 0.0
    stage.error = None
    if job.status == JobStatus.QUEUED:
        job.status = JobStatus.RUNNING
    job.started_at = job.started_at or t


def record_progress(session: Session, *, stage_ids: Sequence[uuid.UUID], progress: float) -> set[uuid.UUID]:
    """Store running stages' progress and heartbeat; returns those of them whose job was asked to cancel."""
    session.execute(
        update(JobStage)
        .where(JobStage.id.in_(stage_ids), JobStage.status == StageStatus.RUNNING)
        .values(progress=progress, heartbeat_at=now())
    )
    canceled = (
        select(JobStage.id)
        .join(Job, JobStage.job_id == Job.id)
        .where(JobStage.id.in_(stage_ids), Job.cancel_requested.is_(True))
    )
    return set(session.scalars(canceled))


def beat_heartbeat(session: Session, *, stage_ids: Sequence[uuid.UUID]) -> None:
    """Record that running stages' worker is alive (the sweeper re-enqueues stages whose beat stops)."""
    session.execute(update(JobStage).where(JobStage.id.in_(stage_ids)).values(heartbeat_at=now()))


def batch_candidates(
    session: Session,
    *,
    stage: str,
    preset: str,
    params: dict[str, Any] | None,
    exclude: uuid.UUID,
    limit: int,
) -> list[Job]:
    """Live, sent jobs whose ``stage`` waits to run with the same ``params`` (its stored parameters, None
    for a stage that takes none) on ``preset``: the runs that may share a forward pass. Highest priority
    first, then the longest waiting; locked, skipping jobs another worker holds."""
    waiting = (
        select(Job)
        .join(JobStage, JobStage.job_id == Job.id)
        .where(
            JobStage.name == stage,
            JobStage.status == StageStatus.PENDING,
            JobStage.queued_at.is_not(None),
            Job.status.in_(ACTIVE),
            Job.preset == preset,
            Job.cancel_requested.is_(False),
            Job.dispatched_at.is_not(None),
            Job.id != exclude,
        )
    )
    if params is not None:
        waiting = waiting.where(Job.input["stages"][stage] == bindparam("stage_params", params, type_=JSONB))
    waiting = waiting.order_by(Job.priority.desc(), JobStage.queued_at).limit(limit)
    return list(session.scalars(waiting.with_for_update(of=Job, skip_locked=True)))


def record_batch(session: Session, *, stage_ids: Sequence[uuid.UUID], size: int) -> None:
    """Mark stage runs as sharing one forward pass of ``size`` images, led by the first of ``stage_ids``."""
    session.execute(update(JobStage).where(JobStage.id.in_(stage_ids)).values(batch_id=stage_ids[0], batch_size=size))


def record_artifact(
    session: Session,
    *,
    job_id: uuid.UUID,
    stage: str,
    index: int,
    key: str,
    content_type: str,
    size_bytes: int,
    sha256: str,
    width: int | None = None,
    height: int | None = None,
    seed: int | None = None,
) -> None:
    """Insert an artifact row unless the same (job, stage, index) is already recorded."""
    session.execute(
        insert(Artifact)
        .values(
            id=uuid.uuid4(),
            job_id=job_id,
            stage=stage,
            index=index,
            key=key,
            content_type=content_type,
            size_bytes=size_bytes,
            sha256=sha256,
            width=width,
            height=height,
            seed=seed,
        )
        .on_conflict_do_nothing(index_elements=["job_id", "stage", "index"])
    )


def image_artifact_key(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, stage: str, index: int
) -> str | None:
    """The object key of an image one of the tenant's jobs produced, or None."""
    return session.scalar(
        select(Artifact.key)
        .join(Job, Job.id == Artifact.job_id)
        .where(
            Job.tenant_id == tenant_id,
            Job.deleted_at.is_(None),
            Artifact.job_id == job_id,
            Artifact.stage == stage,
            Artifact.index == index,
            Artifact.content_type.like("image/%"),
        )
    )


def artifacts_of(session: Session, *, job_id: uuid.UUID, stage: str | None = None) -> list[Artifact]:
    """A job's artifacts (of one stage), ordered by stage and index."""
    query = select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.stage, Artifact.index)
    if stage is not None:
        query = query.where(Artifact.stage == stage)
    return list(session.scalars(query))


def mark_stage_done(stage: JobStage, *, outputs: list[Any]) -> None:
    """The stage succeeded with ``outputs`` (a list of small JSON descriptions)."""
    t = now()
    stage.status = StageStatus.SUCCEEDED
    stage.progress = 1.0
    stage.outputs = outputs
    stage.finished_at = t
    stage.heartbeat_at = t
    if stage.started_at is not None:
        stage.duration_ms = int((t - stage.started_at).total_seconds() * 1000)


def mark_stage_pending(stage: JobStage, *, error: str | None = None) -> None:
    """Put a stage back to pending (a transient error; it will run again)."""
    stage.status = StageStatus.PENDING
    stage.error = error


def finish_job(job: Job, status: JobStatus, *, error: str | None = None) -> None:
    """End the job; stages that had not succeeded take the job's ending."""
    t = now()
    job.status = status
    job.finished_at = t
    if error is not None:
        job.error = error
    if status == JobStatus.SUCCEEDED:
        return
    stage_status = StageStatus.CANCELED if status == JobStatus.CANCELED else StageStatus.FAILED
    # A failure ends the stage that was running; a cancel also ends the stages that never started.
    for stage in job.stages:
        if stage.status == StageStatus.RUNNING or (
            stage.status == StageStatus.PENDING and stage_status == StageStatus.CANCELED
        ):
            stage.status = stage_status
            stage.finished_at = t


def request_cancel(job: Job) -> bool:
    """Ask the job to stop; returns True when it ended at once (no stage was running)."""
    if JobStatus(job.status).is_terminal:
        return False
    job.cancel_requested = True
    if any(stage.status == StageStatus.RUNNING for stage in job.stages):
        return False
    finish_job(job, JobStatus.CANCELED)
    return True


def reset_for_retry(job: Job) -> None:
    """Queue a failed or canceled job again from its first unfinished stage, with fresh attempts; from its
    first stage if retention deleted the intermediates a later stage would read."""
    rerun_all = job.intermediates_purged_at is not None
    job.status = JobStatus.QUEUED
    job.cancel_requested = False
    job.error = None
    job.finished_at = None
    job.intermediates_purged_at = None
    for stage in job.stages:
        if rerun_all:
            stage.outputs = []
        if rerun_all or stage.status != StageStatus.SUCCEEDED:
            stage.status = StageStatus.PENDING
            stage.attempts = 0
            stage.progress = 0.0
            stage.error = None
            stage.started_at = stage.finished_at = stage.heartbeat_at = None
            stage.duration_ms = None


def active_jobs_for_sweep(
    session: Session, *, undispatched_before: datetime, stale_before: datetime, everything: bool, limit: int
) -> list[Job]:
    """Live jobs the broker may have lost, locked so that concurrent sweepers skip them.

    Undispatched jobs (their enqueue failed) older than ``undispatched_before``, and jobs with a running
    stage whose heartbeat is older than ``stale_before`` (its worker died); with ``everything``, every
    live job (the broker itself lost its queues).
    """
    query = select(Job).where(Job.status.in_(ACTIVE), Job.cancel_requested.is_(False))
    if not everything:
        stale_stage = (
            select(JobStage.id)
            .where(
                JobStage.job_id == Job.id, JobStage.status == StageStatus.RUNNING, JobStage.heartbeat_at < stale_before
            )
            .exists()
        )
        query = query.where(or_(and_(Job.dispatched_at.is_(None), Job.created_at < undispatched_before), stale_stage))
    query = query.order_by(Job.created_at).limit(limit).with_for_update(skip_locked=True)
    return list(session.scalars(query))


def stranded_jobs(session: Session, *, quiet_before: datetime, limit: int) -> list[Job]:
    """Live jobs on record as sent that show no sign of life since ``quiet_before``: no stage running, none
    queued, finished or beating since, and not sent again since. Their message was lost after it was sent
    (a chain's next link or a retry that could not be published, a task that died before its claim).
    Locked so that concurrent sweepers skip them."""
    busy_stage = (
        select(JobStage.id)
        .where(
            JobStage.job_id == Job.id,
            or_(
                JobStage.status == StageStatus.RUNNING,
                JobStage.queued_at >= quiet_before,
                JobStage.finished_at >= quiet_before,
                JobStage.heartbeat_at >= quiet_before,
            ),
        )
        .exists()
    )
    query = select(Job).where(
        Job.status.in_(ACTIVE),
        Job.cancel_requested.is_(False),
        Job.dispatched_at < quiet_before,
        ~busy_stage,
    )
    query = query.order_by(Job.created_at).limit(limit).with_for_update(skip_locked=True)
    return list(session.scalars(query))


def cancel_requested_orphans(session: Session, *, stale_before: datetime) -> list[Job]:
    """Jobs asked to cancel whose running stage stopped beating: nobody is left to notice the flag."""
    stale_stage = (
        select(JobStage.id)
        .where(JobStage.job_id == Job.id, JobStage.status == StageStatus.RUNNING, JobStage.heartbeat_at < stale_before)
        .exists()
    )
    query = select(Job).where(Job.status.in_(ACTIVE), Job.cancel_requested.is_(True), stale_stage)
    return list(session.scalars(query.with_for_update(skip_locked=True)))


def try_sweep_lock(session: Session) -> bool:
    """Take the sweeper's transaction-scoped advisory lock; False when another sweeper holds it."""
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(_SWEEP_LOCK_ID))))


def stale_seconds_ago(seconds: float) -> datetime:
    return now() - timedelta(seconds=seconds)


def referenced_upload_keys(session: Session, *, keys: Sequence[str], except_job: uuid.UUID | None = None) -> set[str]:
    """Those of ``keys`` that the input image of a job not deleted (other than ``except_job``) refers to;
    the rest are uploads no job uses."""
    if not keys:
        return set()
    image_key = Job.input["image"]["key"].astext
    query = select(image_key).where(Job.input.has_key("image"), image_key.in_(list(keys)), Job.deleted_at.is_(None))
    if except_job is not None:
        query = query.where(Job.id != except_job)
    return set(session.scalars(query.distinct()))
