"""The sweeper: finds jobs the broker lost, from their rows in Postgres, and enqueues them again.

Three ways a live job can lose its message:
- its enqueue failed (the broker was down when the API committed it): ``dispatched_at`` stays NULL;
- its worker died mid-stage: the stage's heartbeat stops;
- the broker itself lost its queues (Redis restarted without persistence): a marker key that the
  sweeper keeps in Redis is gone, so every live job is enqueued again.
Each re-enqueue starts a new dispatch generation, which turns any late duplicate into a no-op.
"""

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select

from core.config import get_settings
from core.redis_client import get_redis
from db import jobs as job_queries
from db.models import Job, JobStatus, StageStatus
from db.session import session_scope
from workers.dispatch import enqueue_cascade
from workers.events import job_transaction

log = logging.getLogger(__name__)

BROKER_MARKER_KEY = "imagen:broker-marker"
_SWEEP_LOCK_ID = 0x1A6E  # pg advisory lock: one sweeper at a time across all beat instances
_BATCH = 500
_UNDISPATCHED_GRACE_S = 5.0


@dataclass(frozen=True)
class Redispatch:
    job_id: uuid.UUID
    preset: str
    stages: list[str]
    seq: int
    priority: int


def broker_lost_its_queues() -> bool:
    """True once after the broker came back empty; plants the marker for the next check."""
    return bool(get_redis().set(BROKER_MARKER_KEY, "1", nx=True))


def plan_redispatch(job: Job) -> Redispatch:
    """Bump the job's generation and name the stages to run again (none left: just finalize)."""
    first = job_queries.first_unfinished_stage(job)
    seq = job_queries.bump_dispatch(job)
    if first is None:
        return Redispatch(job.id, job.preset, [], seq, job.priority)
    first.queued_at = job_queries.now()
    return Redispatch(job.id, job.preset, [s.name for s in job.stages[first.position :]], seq, job.priority)


def sweep_lost_jobs() -> list[uuid.UUID]:
    """One sweep; returns the ids of the jobs it enqueued again."""
    settings = get_settings()
    plans: list[Redispatch] = []
    with job_transaction() as (session, events):
        if not session.scalar(select(func.pg_try_advisory_xact_lock(_SWEEP_LOCK_ID))):
            return []
        # Checked under the lock: the sweeper that plants the marker is the one that re-enqueues.
        everything = broker_lost_its_queues()
        stale_before = job_queries.stale_seconds_ago(settings.requeue_after_s)
        job_queries.forget_idempotency_keys(session)
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
            plans.append(plan_redispatch(job))
    if everything and plans:
        log.warning("the broker came back empty: enqueuing %d live jobs again", len(plans))
    for plan in plans:
        if enqueue_cascade(plan.job_id, plan.stages, preset=plan.preset, seq=plan.seq, priority=plan.priority):
            with session_scope() as session:
                job_queries.mark_dispatched(session, job_id=plan.job_id, seq=plan.seq)
            log.info(
                "job %s enqueued again from %s (generation %d)",
                plan.job_id,
                plan.stages[0] if plan.stages else "finalize",
                plan.seq,
            )
    return [plan.job_id for plan in plans]
