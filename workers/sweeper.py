"""The sweeper: finds jobs the broker lost, from their rows in Postgres, and enqueues them again.

Three ways a live job can lose its message:
- its enqueue failed (the broker was down when the API committed it): ``dispatched_at`` is NULL (the API
  commits a new job as sent, and takes that back when the send fails);
- its worker died mid-stage: the stage's heartbeat stops;
- the broker itself lost its queues (Redis restarted without persistence): a marker key that the
  sweeper keeps in Redis is gone, so every live job is enqueued again.
Each re-enqueue starts a new dispatch generation, which turns any late duplicate into a no-op.

It also deletes what finished jobs may no longer keep (``sweep_retention``): the objects of deletions the
store interrupted, and what ``IMAGEN_RETAIN_OUTPUT_DAYS`` and ``IMAGEN_RETAIN_INTERMEDIATE_DAYS`` let go, a
bounded batch of each per sweep.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from core.config import get_settings
from core.redis_client import get_redis
from core.statuses import JobStatus, StageStatus
from db import jobs as job_queries
from db import retention
from db.idempotency import forget_idempotency_keys
from db.models import Job
from db.session import session_scope
from storage.errors import StoreError
from storage.factory import process_store
from storage.object_store import ObjectStore
from workers.dispatch import dispatch_job
from workers.lifecycle import job_transaction

log = logging.getLogger(__name__)

BROKER_MARKER_KEY = "imagen:broker-marker"
_BATCH = 500
_UNDISPATCHED_GRACE_S = 5.0


def broker_lost_its_queues() -> bool:
    """True once after the broker came back empty; plants the marker for the next check."""
    return bool(get_redis().set(BROKER_MARKER_KEY, "1", nx=True))


def plan_redispatch(job: Job) -> None:
    """Start a new generation of the job, from its first unfinished stage (none left: just finalize)."""
    first = job_queries.first_unfinished_stage(job)
    job_queries.bump_dispatch(job)
    if first is not None:
        first.queued_at = job_queries.now()


def sweep_lost_jobs() -> list[uuid.UUID]:
    """One sweep; returns the ids of the jobs it enqueued again."""
    settings = get_settings()
    jobs: list[Job] = []
    stranded: list[Job] = []
    with job_transaction() as (session, events):
        if not job_queries.try_sweep_lock(session):
            return []
        # Checked under the lock: the sweeper that plants the marker is the one that re-enqueues.
        everything = broker_lost_its_queues()
        stale_before = job_queries.stale_seconds_ago(settings.requeue_after_s)
        forget_idempotency_keys(session)
        for job in job_queries.cancel_requested_orphans(session, stale_before=stale_before):
            job_queries.finish_job(job, JobStatus.CANCELED)
            events.finished(job)
        jobs = job_queries.active_jobs_for_sweep(
            session,
            undispatched_before=job_queries.stale_seconds_ago(_UNDISPATCHED_GRACE_S),
            stale_before=stale_before,
            everything=everything,
            limit=_BATCH,
        )
        for job in jobs:
            running = [s for s in job.stages if s.status == StageStatus.RUNNING]
            if running:
                running[0].error = "its worker stopped answering; enqueued again"
            plan_redispatch(job)
        if not everything:
            quiet_before = job_queries.stale_seconds_ago(settings.stranded_after_s)
            stranded = job_queries.stranded_jobs(session, quiet_before=quiet_before, limit=_BATCH)
    if everything and jobs:
        log.warning("the broker came back empty: enqueuing %d live jobs again", len(jobs))
    for job in stranded:
        log.warning("job %s has shown no sign of life for %.0f s: sending it again", job.id, settings.stranded_after_s)
    # Each job's new generation is committed before it is sent; the rows stay loaded (no expiry on commit).
    # A stranded job keeps its generation: its lost message, should it turn up after all, still counts.
    with session_scope() as session:
        for job in (*jobs, *stranded):
            dispatch_job(session, job)
    return [job.id for job in (*jobs, *stranded)]


@dataclass(frozen=True)
class RetentionSweep:
    """How many jobs one retention sweep purged, by what it deleted of them."""

    purged: int = 0  # deleted jobs whose objects are now gone (by DELETE, or by the output retention)
    intermediates: int = 0  # jobs that lost their non-final images and prompt embeddings


def sweep_retention(store: ObjectStore | None = None) -> RetentionSweep:
    """Finish interrupted deletions, delete jobs past ``IMAGEN_RETAIN_OUTPUT_DAYS`` and the intermediates of
    jobs past ``IMAGEN_RETAIN_INTERMEDIATE_DAYS``: up to ``IMAGEN_RETENTION_BATCH`` jobs of each, each job in a
    transaction of its own. A store error stops the sweep; the next one resumes where it stopped."""
    settings = get_settings()
    batch = settings.retention_batch
    purged = intermediates = 0
    try:
        store = store or process_store()
        with session_scope() as session:
            unpurged = retention.unpurged_job_ids(session, limit=batch)
        purged += _each(unpurged, lambda session, job: _purge(session, job, store))
        if settings.retain_output_days is not None:
            before = _days_ago(settings.retain_output_days)
            with session_scope() as session:
                expired = retention.kept_job_ids(session, finished_before=before, limit=batch)
            purged += _each(expired, lambda session, job: _delete(session, job, store, before))
        if settings.retain_intermediate_days is not None:
            before = _days_ago(settings.retain_intermediate_days)
            with session_scope() as session:
                aged = retention.job_ids_with_intermediates(session, finished_before=before, limit=batch)
            intermediates += _each(aged, lambda session, job: _purge_intermediates(session, job, store, before))
    except StoreError as exc:
        log.warning("retention sweep stopped: the object store failed: %s", exc)
    if purged or intermediates:
        log.info("retention: purged %d jobs, and the intermediates of %d", purged, intermediates)
    return RetentionSweep(purged=purged, intermediates=intermediates)


def _each(job_ids: list[uuid.UUID], purge: Callable[..., None]) -> int:
    """Run ``purge(session, job)`` on each job not locked elsewhere, a transaction each; how many it ran on."""
    done = 0
    for job_id in job_ids:
        with session_scope() as session:
            job = retention.lock_job(session, job_id)
            if job is None:
                continue  # a request or another sweeper holds it: the next sweep looks again
            purge(session, job)
            done += 1
    return done


def _purge(session: Session, job: Job, store: ObjectStore) -> None:
    if job.purged_at is None:
        retention.purge_objects(session, job, store, upload_grace_s=get_settings().unused_upload_ttl_s)


def _ended_before(job: Job, before: datetime) -> bool:
    """Whether the job (read again under its lock: it may have been retried since) is finished since before
    ``before`` and not deleted."""
    ended = job.finished_at is not None and job.finished_at < before and JobStatus(job.status).is_terminal
    return ended and job.deleted_at is None


def _purge_intermediates(session: Session, job: Job, store: ObjectStore, before: datetime) -> None:
    if _ended_before(job, before) and job.intermediates_purged_at is None:
        retention.purge_intermediates(session, job, store)


def _delete(session: Session, job: Job, store: ObjectStore, before: datetime) -> None:
    """A job past the output retention: a tombstone (committed first), then its objects go."""
    if _ended_before(job, before):
        retention.mark_deleted(session, job)
        session.commit()
        retention.purge_objects(session, job, store, upload_grace_s=get_settings().unused_upload_ttl_s)


def _days_ago(days: float) -> datetime:
    return job_queries.now() - timedelta(days=days)
