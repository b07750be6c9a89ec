"""The dispatcher: everything that sends work to the broker, by task name (no model code is imported).

The API and the sweeper send a job through ``dispatch_job`` (its first unfinished stage), and the run that
completes a stage sends its job on through ``send_on``; job events send webhook deliveries through
``enqueue_delivery``; a search sends its query through ``send_query_embedding``.
"""

import logging
import uuid

from celery.canvas import Signature
from celery.result import AsyncResult
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.logs import REQUEST_ID_TASK_HEADER
from core.presets import get_preset
from core.routing import DELIVER_WEBHOOK_TASK, EMBED_QUERY_TASK, FINALIZE_TASK, TASK_QUEUES, stage_task
from core.tracing import job_trace
from db import jobs as job_queries
from db.models import Job
from workers.celery_app import app

log = logging.getLogger(__name__)

# Publishing gives up quickly when the broker is down: the job (or event) is already committed, and the
# sweeper sends it once the broker is back.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
_SEND_ERRORS = (KombuError, RedisError, OSError)


def stage_signature(job_id: uuid.UUID, stage: str | None, *, preset: str, seq: int, priority: int) -> Signature:
    """The immutable signature of one stage of a job of ``preset`` (``None``: finalizing the job).

    A job is sent one stage at a time: the run that completes a stage sends the next (see
    ``workers.lifecycle``), so a run that completed several jobs' stages in one batch sends each job on.
    Sent by name, a signature would not know the task's ``ignore_result`` and Celery would subscribe to its
    result as it publishes: with Redis down, a submission would then wait out the result backend's
    reconnects and fail, where it should record the job and answer at once.
    """
    if stage is None:
        task, queue, name = FINALIZE_TASK, TASK_QUEUES[FINALIZE_TASK], "finalize"
    else:
        (task, queue), name = stage_task(get_preset(preset), stage), stage
    return app.signature(
        task,
        args=(str(job_id), name, seq),
        immutable=True,
        queue=queue,
        priority=9 - priority,  # the API's 9 runs first; Redis serves 0 first
        ignore_result=True,
    )


def enqueue_stage(
    job_id: uuid.UUID,
    stage: str | None,
    *,
    preset: str,
    seq: int,
    priority: int,
    request_id: str | None,
    traceparent: str | None = None,
    countdown: float = 0,
) -> bool:
    """Send one stage of a job (``None``: finalize it) to the broker; False (logged) when it cannot be reached.

    The message carries the id of the request that submitted the job and, when tracing is on, that
    request's trace (the job's own, even when another job's run sends it): the stage's log lines name the
    request, and its spans join its trace.
    """
    signature = stage_signature(job_id, stage, preset=preset, seq=seq, priority=priority)
    headers = {REQUEST_ID_TASK_HEADER: request_id or ""}
    try:
        with job_trace(traceparent):
            signature.apply_async(countdown=countdown or None, retry=True, retry_policy=_PUBLISH_RETRY, headers=headers)
    except _SEND_ERRORS as exc:
        log.warning("could not enqueue %s of job %s (generation %d): %s; the sweeper will", stage, job_id, seq, exc)
        return False
    return True


def dispatch_job(session: Session, job: Job) -> bool:
    """Send a committed job's first unfinished stage (of its current generation) and record that it got
    there; commits. False when the broker is down: the job stays committed and undispatched, for the sweeper."""
    first = job_queries.first_unfinished_stage(job)
    stage = first.name if first is not None else None
    seq = job.dispatch_seq
    if not _enqueue_job(job, stage):
        return False
    job_queries.mark_dispatched(session, job_id=job.id, seq=seq)
    session.commit()
    log.info("job %s sent from %s (generation %d)", job.id, stage or "finalize", seq)
    return True


def dispatch_new_job(session: Session, job: Job) -> bool:
    """Send a new job, committed with ``dispatched_at`` already set; False when the broker is down.

    Then the record of dispatch is taken back, so the sweeper sends the job within seconds. Should that fail
    too (the database went down with the broker), or the process die between commit and send, the job still
    reads as sent: the sweep for stranded jobs sends it after ``IMAGEN_STRANDED_AFTER_S``. Either way it is
    never lost.
    """
    if _enqueue_job(job, job.stages[0].name):
        return True
    _take_back_dispatch(session, job.id, job.dispatch_seq)
    return False


def _enqueue_job(job: Job, stage: str | None) -> bool:
    """``enqueue_stage`` for a job at hand, in its current generation."""
    return enqueue_stage(
        job.id,
        stage,
        preset=job.preset,
        seq=job.dispatch_seq,
        priority=job.priority,
        request_id=job.request_id,
        traceparent=job.traceparent,
    )


def send_on(
    session: Session,
    job_id: uuid.UUID,
    stage: str | None,
    *,
    preset: str,
    seq: int,
    priority: int,
    request_id: str | None,
    traceparent: str | None,
) -> bool:
    """Send a job on to ``stage`` (``None``: finalize it) once the stage before it completed, committed.

    When the broker cannot be reached the record of dispatch is taken back, so the sweeper sends the job
    again within seconds; should that fail too, the sweep for stranded jobs does, later.
    """
    if enqueue_stage(
        job_id, stage, preset=preset, seq=seq, priority=priority, request_id=request_id, traceparent=traceparent
    ):
        return True
    _take_back_dispatch(session, job_id, seq)
    return False


def _take_back_dispatch(session: Session, job_id: uuid.UUID, seq: int) -> None:
    try:
        job_queries.unmark_dispatched(session, job_id=job_id, seq=seq)
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("job %s stays marked as sent (%s); the sweep for stranded jobs will send it", job_id, exc)


def enqueue_delivery(event_id: uuid.UUID | str, countdown: float = 0) -> bool:
    """Send a delivery task for a webhook event; False (logged) when the broker is down.

    The event is already in the outbox: the sweeper enqueues it once the broker is back.
    """
    signature = app.signature(
        DELIVER_WEBHOOK_TASK, args=(str(event_id),), queue=TASK_QUEUES[DELIVER_WEBHOOK_TASK], ignore_result=True
    )
    try:
        signature.apply_async(countdown=countdown or None, retry=True, retry_policy=_PUBLISH_RETRY)
    except _SEND_ERRORS as exc:
        log.warning("could not enqueue webhook %s: %s; the sweeper will", event_id, exc)
        return False
    return True


def send_query_embedding(preset: str, *, text: str | None = None, image_key: str | None = None) -> AsyncResult:
    """Ask an embed worker for a search query's vector; its answer comes back through the result backend.

    Raises the broker's errors (KombuError, RedisError, OSError), and RuntimeError when Celery's result
    consumer gave up reconnecting (it tries again on the next call).
    """
    return app.send_task(
        EMBED_QUERY_TASK,
        kwargs={"preset": preset, "text": text, "image_key": image_key},
        queue=TASK_QUEUES[EMBED_QUERY_TASK],
        priority=0,  # a person is waiting: ahead of indexing work
    )
