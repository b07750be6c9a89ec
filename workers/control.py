"""The control tasks' bodies: finishing a job once its stages are done, and the periodic sweep."""

import logging
import uuid

from core.statuses import JobStatus, StageStatus
from db import jobs as job_queries
from workers.lifecycle import job_transaction
from workers.sweeper import sweep_lost_jobs, sweep_retention
from workers.unused_uploads import sweep_unused_uploads
from workers.webhooks import sweep_due_webhooks

log = logging.getLogger(__name__)


def finalize_job(job_id: uuid.UUID, seq: int) -> None:
    """Mark the job succeeded once every stage has (or canceled, if that was asked meanwhile)."""
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=job_id, for_update=True)
        if job is None or job.dispatch_seq != seq or JobStatus(job.status).is_terminal:
            return
        if job.cancel_requested:
            job_queries.finish_job(job, JobStatus.CANCELED)
            events.finished(job)
        elif all(s.status == StageStatus.SUCCEEDED for s in job.stages):
            job_queries.finish_job(job, JobStatus.SUCCEEDED)
            events.finished(job)
        else:
            log.warning("job %s: finalize reached with unfinished stages", job_id)


def sweep() -> None:
    """Re-enqueue the jobs and webhook deliveries the broker lost; delete what finished jobs may no longer keep;
    now and then, delete unused uploads."""
    sweep_lost_jobs()
    sweep_due_webhooks()
    sweep_retention()
    sweep_unused_uploads()
