"""Cancel, retry, delete and redeliver: the state changes shared by the /v1 routes and the admin dashboard."""

import logging
import uuid
from contextlib import suppress

from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from api.quotas import check_jobs_in_flight
from core.config import Settings
from core.errors import Conflict, NotFound, QuotaExceeded
from core.live_events import append_live, stream_key
from core.redis_client import cancel_key, get_redis
from db import jobs as job_queries
from db import retention
from db import webhooks as webhook_queries
from db.events import JobEvents
from db.models import Job, JobStatus, Tenant, WebhookEvent
from storage.errors import StoreError
from storage.object_store import ObjectStore
from workers.dispatch import dispatch_job, enqueue_delivery

log = logging.getLogger(__name__)


def cancel_job_now(session: Session, job: Job) -> None:
    """Cancel a job locked for update: at once if queued, else when its running stage notices; commits."""
    events = JobEvents(session)
    if job_queries.request_cancel(job):
        events.finished(job)
    session.commit()
    events.publish(enqueue_delivery)
    if job.cancel_requested:
        # The stage's progress callback reads the flag from the row as well; Redis only makes it cheap.
        with suppress(RedisError):
            get_redis().set(cancel_key(job.id), "1", ex=86_400)


def retry_job_now(session: Session, job: Job, *, quota: Settings | None = None) -> None:
    """Queue a failed or canceled job (locked for update) again from its first unfinished stage; commits.

    With ``quota`` (the settings whose defaults apply), the job counts against its tenant's jobs in flight
    as a new submission would: a QuotaExceeded leaves it as it was.
    """
    if job.deleted_at is not None:
        raise Conflict("this job was deleted: its outputs are gone; submit it again as a new job", field="deleted_at")
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELED):
        raise Conflict(f"only failed or canceled jobs can be retried; this one is {job.status}", field="status")
    job_queries.reset_for_retry(job)
    if quota is not None:
        tenant = session.get(Tenant, job.tenant_id)
        assert tenant is not None
        try:
            check_jobs_in_flight(session, tenant=tenant, settings=quota)
        except QuotaExceeded:
            session.rollback()
            raise
    job_queries.bump_dispatch(job)
    first = job_queries.first_unfinished_stage(job)
    if first is not None:
        first.queued_at = job_queries.now()
    session.commit()
    with suppress(RedisError):
        # The old stream ends with "done": a new run starts a new stream.
        get_redis().delete(cancel_key(job.id), stream_key(job.id))
    append_live(job.id, "status", {"status": str(job.status)})
    dispatch_job(session, job)


def delete_job_now(session: Session, job: Job, store: ObjectStore, *, upload_grace_s: float) -> None:
    """Delete a finished job (locked for update): its rows' outputs at once, then its objects; commits.

    The tombstone and the forgotten rows are committed before any object is deleted. If the object store
    fails then, the job stays deleted for every client and the sweeper deletes the objects later: nothing is
    orphaned, and no job looks whole with half its images gone. Deleting a deleted job again does nothing new.
    """
    if not JobStatus(job.status).is_terminal:
        raise Conflict(
            f"only a finished job can be deleted; this one is {job.status}: cancel it first"
            f" (POST /v1/jobs/{job.id}/cancel), then delete it once it is canceled",
            field="status",
        )
    retention.mark_deleted(session, job)
    session.commit()
    if job.purged_at is not None:
        return
    try:
        retention.purge_objects(session, job, store, upload_grace_s=upload_grace_s)
        session.commit()
    except StoreError as exc:
        session.rollback()
        log.warning("job %s deleted; its objects wait for the sweeper: %s", job.id, exc)


def redeliver_event(session: Session, job: Job, delivery_id: str) -> WebhookEvent:
    """Put one of the job's webhook events back on a fresh retry schedule and queue it; commits."""
    try:
        event_id = uuid.UUID(delivery_id)
    except ValueError:
        raise NotFound(f"no delivery {delivery_id!r} for job {job.id}", field="delivery_id") from None
    event = webhook_queries.get_event(session, event_id=event_id, for_update=True)
    if event is None or event.job_id != job.id:
        raise NotFound(f"no delivery {delivery_id!r} for job {job.id}", field="delivery_id")
    # An attempt is in flight: its outcome may deliver the event; queueing another now would only race it.
    if webhook_queries.is_leased(event):
        raise Conflict("this event is being delivered right now; try again in a few seconds", field="delivery_id")
    webhook_queries.reset_for_redelivery(event)
    session.commit()
    enqueue_delivery(event.id)
    return event
