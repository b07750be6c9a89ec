"""The dispatcher: everything that sends work to the broker, by task name (no model code is imported).

The API and the sweeper send a job's cascade through ``dispatch_job``; job events send webhook
deliveries through ``enqueue_delivery``; a search sends its query through ``send_query_embedding``.
"""

import logging
import uuid
from collections.abc import Sequence

from celery import chain
from celery.canvas import Signature
from celery.result import AsyncResult
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.presets import get_preset
from core.routing import DELIVER_WEBHOOK_TASK, EMBED_QUERY_TASK, FINALIZE_TASK, TASK_QUEUES, stage_task
from db import jobs as job_queries
from db.models import Job
from workers.celery_app import app

log = logging.getLogger(__name__)

# Publishing gives up quickly when the broker is down: the job (or event) is already committed, and the
# sweeper sends it once the broker is back.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
_SEND_ERRORS = (KombuError, RedisError, OSError)


def cascade_chain(job_id: uuid.UUID, stages: Sequence[str], *, preset: str, seq: int, priority: int) -> Signature:
    """The chain of immutable signatures that runs ``stages`` of a job of ``preset``, then finalizes it.

    Sent by name, the signatures would not know the tasks' ``ignore_result`` and Celery would subscribe
    to each result as it publishes: with Redis down, a submission would then wait out the result
    backend's reconnects and fail, where it should record the job and answer at once.
    """
    redis_priority = 9 - priority  # the API's 9 runs first; Redis serves 0 first
    preset_spec = get_preset(preset)
    steps = [(*stage_task(preset_spec, name), name) for name in stages]
    steps.append((FINALIZE_TASK, TASK_QUEUES[FINALIZE_TASK], "finalize"))
    signatures = [
        app.signature(
            task,
            args=(str(job_id), name, seq),
            immutable=True,
            queue=queue,
            priority=redis_priority,
            ignore_result=True,
        )
        for task, queue, name in steps
    ]
    return chain(*signatures)


def enqueue_cascade(job_id: uuid.UUID, stages: Sequence[str], *, preset: str, seq: int, priority: int) -> bool:
    """Send the chain to the broker; False (logged) when the broker cannot be reached."""
    signature = cascade_chain(job_id, stages, preset=preset, seq=seq, priority=priority)
    try:
        signature.apply_async(retry=True, retry_policy=_PUBLISH_RETRY)
    except _SEND_ERRORS as exc:
        log.warning("could not enqueue job %s (generation %d): %s; the sweeper will", job_id, seq, exc)
        return False
    return True


def dispatch_job(session: Session, job: Job) -> bool:
    """Send a committed job's remaining stages (of its current generation) and record that they got there;
    commits. False when the broker is down: the job stays committed and undispatched, for the sweeper."""
    first = job_queries.first_unfinished_stage(job)
    stages = [s.name for s in job.stages[first.position :]] if first is not None else []
    seq = job.dispatch_seq
    if not enqueue_cascade(job.id, stages, preset=job.preset, seq=seq, priority=job.priority):
        return False
    job_queries.mark_dispatched(session, job_id=job.id, seq=seq)
    session.commit()
    log.info("job %s sent from %s (generation %d)", job.id, stages[0] if stages else "finalize", seq)
    return True


def dispatch_new_job(session: Session, job: Job) -> bool:
    """Send a new job, committed with ``dispatched_at`` already set; False when the broker is down.

    Then the record of dispatch is taken back, so the sweeper sends the job within seconds. Should that fail
    too (the database went down with the broker), or the process die between commit and send, the job still
    reads as sent: the sweep for stranded jobs sends it after ``IMAGEN_STRANDED_AFTER_S``. Either way it is
    never lost.
    """
    seq = job.dispatch_seq
    if enqueue_cascade(job.id, [s.name for s in job.stages], preset=job.preset, seq=seq, priority=job.priority):
        return True
    try:
        job_queries.unmark_dispatched(session, job_id=job.id, seq=seq)
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("job %s stays marked as sent (%s); the sweep for stranded jobs will send it", job.id, exc)
    return False


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
