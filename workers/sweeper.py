"""The sweeper: finds jobs the broker lost, from their rows in Postgres, and enqueues them again.

Three ways a live job can lose its message:
- its enqueue failed (the broker was down when the API committed it): ``dispatched_at`` is NULL (the API
  commits a new job as sent, and takes that back when the send fails);
- its worker died mid-stage: the stage's heartbeat stops;
- the broker itself lost its queues (Redis restarted without persistence): a marker key that the
  sweeper keeps in Redis is gone, so every live job is enqueued again.
Each re-enqueue starts a new dispatch generation, which turns any late duplicate into a no-op.
"""

import logging
import uuid

from core.config import get_settings
from core.redis_client import get_redis
from core.statuses import JobStatus, StageStatus
from db import jobs as job_queries
from db.idempotency import forget_idempotency_keys
from db.models import Job
from db.session import session_scope
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
