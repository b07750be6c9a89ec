"""The life cycle every stage task shares: claim the stage, keep its heartbeat, report progress, then record
success or failure, in transactions whose job events are published after they commit.

A task of an older dispatch generation (a broker redelivery racing the sweeper) stops at once: each one
carries ``seq``, and only the job's current generation may claim a stage.
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.config import get_settings
from core.job_input import JobSpec, read_job_input
from core.live_events import append_live
from core.redis_client import cancel_key, get_redis
from core.statuses import JobStatus, StageStatus
from db import jobs as job_queries
from db.events import JobEvents
from db.models import JobStage
from db.session import session_scope
from storage.errors import StoreUnavailable
from workers.dispatch import enqueue_delivery

log = logging.getLogger(__name__)

# Errors that say "try again later", not "this job is broken".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    OperationalError,
    RedisError,
    ConnectionError,
    TimeoutError,
)
PROGRESS_INTERVAL_S = 0.25
# A stage waits out a transient error with backoff (1, 2, 4, ... 60 s: about 7.5 minutes in all) before
# its job fails; these retries are not attempts.
MAX_TRANSIENT_RETRIES = 12
MAX_BACKOFF_S = 60
# How long past its time limit a stage that does not stop at a denoising step may go on before its worker
# exits (see ``_heartbeat``).
HARD_LIMIT_GRACE_S = 30.0


class StageCanceled(Exception):
    """Raised inside a denoising callback when the job was asked to cancel."""


class StageTimedOut(Exception):
    """Raised inside a denoising callback once the stage has run past its time limit."""


@dataclass
class StageRun:
    """What a stage function needs about its job, read once when the stage is claimed."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    stage: str
    stage_id: uuid.UUID
    preset: str
    spec: JobSpec
    meta: dict[str, Any]
    previous_stage: str | None
    # Earlier stages' recorded outputs, by stage name (captions feed the index, for one).
    earlier_outputs: dict[str, list[dict[str, Any]]]
    outputs: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    # time.monotonic() past which the stage stops (IMAGEN_STAGE_TIME_LIMIT_S after it started).
    deadline: float = float("inf")


@contextmanager
def job_transaction() -> Iterator[tuple[Session, JobEvents]]:
    """A transaction whose job events are published after it commits (and dropped if it rolls back)."""
    with session_scope() as session:
        events = JobEvents(session)
        yield session, events
    events.publish(enqueue_delivery)


def run_stage(
    task: Task,
    job_id: str,
    stage_name: str,
    seq: int,
    work: Callable[[StageRun], None],
    load: Callable[[str, Path], object],
) -> None:
    """Claim, run, record: the life cycle every stage task shares."""
    jid = uuid.UUID(job_id)
    try:
        preset = _peek_preset(jid)
        if preset is None:
            raise Ignore()
        # Load the models before claiming, so a long first load is not mistaken for a dead worker.
        load(preset, get_settings().resolved_models_dir)
        run = _claim(jid, stage_name, seq)
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s: %s could not start: %s: %s", job_id, stage_name, type(exc).__name__, exc)
        raise task.retry(exc=exc, countdown=_backoff(task)) from exc
    if run is None:
        log.info("job %s: %s already done; continuing", job_id, stage_name)
        return
    started = time.monotonic()
    limit_s = get_settings().stage_time_limit_s
    run.deadline = started + limit_s
    try:
        with _heartbeat(run.stage_id, deadline=run.deadline):
            work(run)
    except StageCanceled:
        log.info("job %s canceled during %s", job_id, stage_name)
        _cancel(jid)
        raise Ignore() from None
    except StageTimedOut:
        error = f"ran past the stage time limit of {limit_s} s"
        log.warning("job %s: %s %s; it will run again while attempts remain", job_id, stage_name, error)
        try:
            _time_out(jid, stage_name, error)
        except TRANSIENT_ERRORS as unrecorded:
            # Its heartbeat has stopped: the sweeper sends the stage again once it goes stale.
            log.warning("job %s: could not record the time-out of %s: %s", job_id, stage_name, unrecorded)
            raise Ignore() from None
        # The next claim counts the attempt, and fails the job once they are spent.
        raise task.retry(countdown=1) from None
    except TRANSIENT_ERRORS as exc:
        will_retry = task.request.retries < MAX_TRANSIENT_RETRIES
        log.warning("job %s: %s hit a transient error (retry %s): %s", job_id, stage_name, will_retry, exc)
        try:
            _fail(jid, stage_name, f"{type(exc).__name__}: {exc}", will_retry=will_retry)
        except TRANSIENT_ERRORS as unrecorded:
            # The database is down too: the stage stays marked running until its heartbeat goes stale.
            log.warning("job %s: could not record the error of %s: %s", job_id, stage_name, unrecorded)
        if not will_retry:
            raise
        raise task.retry(exc=exc, countdown=_backoff(task)) from exc
    except Exception as exc:
        _fail(jid, stage_name, f"{type(exc).__name__}: {exc}", will_retry=False)
        raise
    _complete(run, seq)
    log.info("job %s: %s done in %.2f s", job_id, stage_name, time.monotonic() - started)


def progress_reporter(run: StageRun) -> Callable[[float], None]:
    """A denoising callback: records progress (throttled) and raises StageCanceled on a cancel request."""
    redis_client = get_redis()
    last_write = 0.0

    def report(fraction: float) -> None:
        nonlocal last_write
        try:
            cancel_hint = bool(redis_client.exists(cancel_key(run.job_id)))
        except RedisError:
            cancel_hint = False  # the row below is the source of truth; Redis only makes the check cheap
        now = time.monotonic()
        if now > run.deadline:
            raise StageTimedOut()
        if not cancel_hint and fraction < 1.0 and now - last_write < PROGRESS_INTERVAL_S:
            return
        last_write = now
        with session_scope() as session:
            canceled = job_queries.record_progress(session, stage_id=run.stage_id, progress=fraction)
        if canceled:
            raise StageCanceled()
        append_live(run.job_id, "progress", {"stage": run.stage, "progress": round(fraction, 4)})

    return report


def _peek_preset(job_id: uuid.UUID) -> str | None:
    with session_scope() as session:
        job = job_queries.get_job(session, job_id=job_id)
        return job.preset if job is not None else None


def _claim(job_id: uuid.UUID, stage_name: str, seq: int) -> StageRun | None:
    """Mark the stage running; None when it already succeeded (a redelivery). Ignore stops the chain."""
    max_attempts = get_settings().max_attempts
    run: StageRun | None = None
    stop = False
    # Decisions are committed before Ignore is raised: raising inside the transaction would roll them back.
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=job_id, for_update=True)
        if job is None:
            log.warning("job %s is gone; dropping %s", job_id, stage_name)
            stop = True
        elif job.dispatch_seq != seq:
            log.info("job %s: %s of generation %d superseded by %d", job_id, stage_name, seq, job.dispatch_seq)
            stop = True
        elif JobStatus(job.status).is_terminal:
            stop = True
        elif job.cancel_requested:
            job_queries.finish_job(job, JobStatus.CANCELED)
            events.finished(job)
            stop = True
        else:
            stage = job.stage(stage_name)
            if stage.status == StageStatus.SUCCEEDED:
                return None
            if _running_elsewhere(stage):
                # Another worker runs it right now (this is a redelivery or a resend): running it here too
                # would do the work twice. Should that worker die, its heartbeat stops and the sweeper
                # sends the job again.
                log.info("job %s: %s is running elsewhere; dropping this message", job_id, stage_name)
                stop = True
            elif stage.attempts >= max_attempts:
                reason = stage.error or "its worker stopped before it finished"
                stage.status = StageStatus.FAILED
                job_queries.finish_job(
                    job,
                    JobStatus.FAILED,
                    error=f"stage {stage_name} did not complete after {stage.attempts} attempts: {reason}",
                )
                events.finished(job)
                stop = True
            else:
                first_start = job.status == JobStatus.QUEUED
                job_queries.mark_stage_running(job, stage)
                if first_start:
                    events.started(job)
                events.stage_running(job, stage)
                previous = job.stages[stage.position - 1].name if stage.position > 0 else None
                run = StageRun(
                    job_id=job.id,
                    tenant_id=job.tenant_id,
                    kind=job.kind,
                    stage=stage_name,
                    stage_id=stage.id,
                    preset=job.preset,
                    spec=read_job_input(job.kind, job.input),
                    meta=dict(job.meta),
                    previous_stage=previous,
                    earlier_outputs={s.name: list(s.outputs) for s in job.stages[: stage.position]},
                )
    if stop or run is None:
        raise Ignore()
    return run


def _running_elsewhere(stage: JobStage) -> bool:
    """Whether a worker is running ``stage`` now: it is marked running and its heartbeat is fresh."""
    fresh_after = job_queries.stale_seconds_ago(get_settings().requeue_after_s)
    return stage.status == StageStatus.RUNNING and stage.heartbeat_at is not None and stage.heartbeat_at > fresh_after


def _complete(run: StageRun, seq: int) -> None:
    """Record the stage's artifacts and success; Ignore stops the chain if the job was canceled meanwhile."""
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=run.job_id, for_update=True)
        if job is None:
            raise Ignore()
        for artifact in run.artifacts:
            job_queries.record_artifact(session, job_id=run.job_id, stage=run.stage, **artifact)
        stage = job.stage(run.stage)
        if stage.status != StageStatus.SUCCEEDED:
            job_queries.mark_stage_done(stage, outputs=run.outputs)
            events.stage_done(job, stage)
        if stage.position + 1 < len(job.stages):
            job.stages[stage.position + 1].queued_at = job_queries.now()
        if job.cancel_requested and not JobStatus(job.status).is_terminal:
            job_queries.finish_job(job, JobStatus.CANCELED)
            events.finished(job)
        go_on = job.dispatch_seq == seq and not JobStatus(job.status).is_terminal
    if not go_on:
        raise Ignore()


def _fail(job_id: uuid.UUID, stage_name: str, error: str, *, will_retry: bool) -> None:
    """Record a stage error: back to pending when the task will retry it (a transient error, which does not
    count as an attempt: an outage of the store or the database is no fault of the stage), else the job fails."""
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=job_id, for_update=True)
        if job is None or JobStatus(job.status).is_terminal:
            return
        stage = job.stage(stage_name)
        if will_retry:
            job_queries.mark_stage_pending(stage, error=error)
            stage.attempts = max(stage.attempts - 1, 0)
            return
        stage.error = error
        job_queries.finish_job(job, JobStatus.FAILED, error=f"stage {stage_name} failed: {error}")
        events.finished(job)


def _time_out(job_id: uuid.UUID, stage_name: str, error: str) -> None:
    """Put a stage that ran past its time limit back to pending; its attempt stays counted."""
    with session_scope() as session:  # no event: the stage only goes back to pending
        job = job_queries.get_job(session, job_id=job_id, for_update=True)
        if job is not None and not JobStatus(job.status).is_terminal:
            job_queries.mark_stage_pending(job.stage(stage_name), error=error)


def _cancel(job_id: uuid.UUID) -> None:
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=job_id, for_update=True)
        if job is not None and not JobStatus(job.status).is_terminal:
            job_queries.finish_job(job, JobStatus.CANCELED)
            events.finished(job)


def _exit_worker(stage_id: uuid.UUID) -> None:
    log.critical(
        "stage %s is %.0f s past its time limit and does not stop: exiting the worker, whose restart leaves"
        " the stage to the sweeper",
        stage_id,
        HARD_LIMIT_GRACE_S,
    )
    logging.shutdown()
    os._exit(70)  # EX_SOFTWARE; nothing of this process can be trusted to unwind


@contextmanager
def _heartbeat(
    stage_id: uuid.UUID,
    *,
    deadline: float,
    grace_s: float = HARD_LIMIT_GRACE_S,
    on_overrun: Callable[[uuid.UUID], None] = _exit_worker,
) -> Iterator[None]:
    """Refresh the stage's heartbeat while it runs; the sweeper re-enqueues stages whose beat stops.

    A stage past its ``deadline`` stops at its next denoising step (see ``progress_reporter``). One still
    running ``grace_s`` later (stuck in a call that never returns) calls ``on_overrun``: the solo pool a
    model worker runs cannot kill one task as prefork's time limit would, so the worker exits. The beat
    goes on until then, so the sweeper sends the stage elsewhere only once this run is over.
    """
    interval = max(get_settings().requeue_after_s / 4, 0.5)
    hard_deadline = deadline + grace_s
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(interval, max(hard_deadline - time.monotonic(), 0.05))):
            if time.monotonic() > hard_deadline:
                on_overrun(stage_id)
                return
            try:
                with session_scope() as session:
                    job_queries.beat_heartbeat(session, stage_id=stage_id)
            except OperationalError as exc:
                log.warning("heartbeat of stage %s failed: %s", stage_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{stage_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _backoff(task: Task) -> float:
    """Seconds before the next try after a transient error: 1, 2, 4, ... up to a minute."""
    return float(min(2**task.request.retries, MAX_BACKOFF_S))
