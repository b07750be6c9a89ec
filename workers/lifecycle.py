"""The life cycle every stage task shares: claim the stage, keep its heartbeat, report progress, then record
success or failure, in transactions whose job events are published after they commit, and send the job on.

A task of an older dispatch generation (a broker redelivery racing the sweeper) stops at once: each one
carries ``seq``, and only the job's current generation may claim a stage.

A denoising stage (and the text encoder) runs in batches across jobs: the worker that claims one run also
claims other jobs' waiting runs of the same stage that can share its forward passes (same preset and
parameters; see ``_gather``), up to ``IMAGEN_MAX_BATCH`` images. Each run keeps its own claim, attempts,
heartbeat, progress, outputs and events; the run that completes a stage sends its job on to the next stage,
once (``completed_seq``), so a companion's own message, when it comes, finds the stage done and stops. A
run that fails alone fails its job alone: a batch that fails is run again in halves.
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.config import get_settings
from core.job_input import GenerateSpec, JobSpec, read_job_input
from core.live_events import append_live
from core.redis_client import cancel_key, get_redis
from core.routing import ENCODE_TEXT
from core.statuses import JobStatus, StageStatus
from db import jobs as job_queries
from db.events import JobEvents
from db.models import Job, JobStage
from db.session import session_scope
from storage.errors import StoreUnavailable
from workers.dispatch import enqueue_delivery, enqueue_stage, send_on

log = logging.getLogger(__name__)

# Errors that say "try again later", not "this job is broken".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    OperationalError,
    RedisError,
    ConnectionError,
    TimeoutError,
)
# A running stage's progress goes to its jobs' live streams (SSE, ``Prefer: wait``) at most every
# PROGRESS_INTERVAL_S, and to their rows at most every PROGRESS_ROW_INTERVAL_S: the rows are what polls and
# the dashboard read, and their writes are the Postgres load that grows with the number of GPUs.
PROGRESS_INTERVAL_S = 0.25
PROGRESS_ROW_INTERVAL_S = 1.0
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


# Errors that stop a whole batch (its runs go back to pending), where any other fails only the runs it hits.
_STOPS_THE_BATCH: tuple[type[BaseException], ...] = (StageTimedOut, *TRANSIENT_ERRORS)


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
    # The dispatch generation the run was claimed in, and the job's priority (for the stage it sends next).
    seq: int = 0
    priority: int = 5
    # The request that submitted the job, and its trace: the job's messages carry them (core/logs.py,
    # core/tracing.py).
    request_id: str | None = None
    traceparent: str | None = None
    # The stage's stored parameters (None for a stage that takes none): runs share a pass only if equal.
    stage_params: dict[str, Any] | None = None
    # time.monotonic() past which the stage stops (IMAGEN_STAGE_TIME_LIMIT_S after it started).
    deadline: float = float("inf")
    # Set once its job was canceled while a batch it shares ran on, and once it was recorded as done.
    canceled: bool = False
    done: bool = False

    @property
    def images(self) -> int:
        """How many images (or prompts) the run puts into a batch."""
        if isinstance(self.spec, GenerateSpec) and self.stage != ENCODE_TEXT:
            return self.spec.num_images
        return 1


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
    work: Callable[[list[StageRun]], None],
    load: Callable[[str, str], object],
    *,
    batch: bool = False,
) -> None:
    """Claim, run, record, send on: the life cycle every stage task shares. With ``batch``, the stage also
    runs other jobs' waiting runs of it that can share its forward passes."""
    jid = uuid.UUID(job_id)
    try:
        preset = _peek_preset(jid)
        if preset is None:
            raise Ignore()
        # Load the models before claiming, so a long first load is not mistaken for a dead worker.
        load(preset, stage_name)
        leader = _claim(jid, stage_name, seq)
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s: %s could not start: %s: %s", job_id, stage_name, type(exc).__name__, exc)
        raise task.retry(exc=exc, countdown=_backoff(task)) from exc
    if leader is None:
        return
    runs = [leader, *_gather(leader)] if batch else [leader]
    started = time.monotonic()
    limit_s = get_settings().stage_time_limit_s
    for run in runs:
        run.deadline = started + limit_s
    try:
        with _heartbeat([run.stage_id for run in runs], deadline=started + limit_s):
            _run_in_halves(runs, work)
    except StageTimedOut:
        _after_time_out(task, runs, limit_s)
        return
    except TRANSIENT_ERRORS as exc:
        _after_transient_error(task, runs, exc)
        return
    names = f"{stage_name} of {len(runs)} jobs" if len(runs) > 1 else stage_name
    log.info("job %s: %s done in %.2f s", job_id, names, time.monotonic() - started)


def _run_in_halves(runs: list[StageRun], work: Callable[[list[StageRun]], None]) -> None:
    """Run ``work`` on the runs together and complete each; if it fails, run each half again on its own,
    until a run that fails alone fails its job (another job's bad input never fails a batch's others).

    A time-out and a transient error stop the whole batch (see ``run_stage``); a cancel stops only the
    part whose runs were all canceled (each was recorded as it was seen)."""
    live = [run for run in runs if not run.canceled and not run.done]
    if not live:
        return
    for run in live:
        run.outputs.clear()
        run.artifacts.clear()
    try:
        work(live)
    except StageCanceled:
        return
    except _STOPS_THE_BATCH:
        raise
    except Exception as exc:
        if len(live) > 1:
            log.warning("%s of %d jobs failed together (%s); running each half alone", live[0].stage, len(live), exc)
            half = len(live) // 2
            _run_in_halves(live[:half], work)
            _run_in_halves(live[half:], work)
            return
        run = live[0]
        log.exception("job %s: %s failed", run.job_id, run.stage)
        _fail(run.job_id, run.stage, f"{type(exc).__name__}: {exc}", will_retry=False)
        run.done = True
        return
    for run in live:
        if not run.canceled:
            _complete_and_send_on(run)


def _after_time_out(task: Task, runs: list[StageRun], limit_s: int) -> None:
    """Put the runs that had not finished back to pending (their attempt counted) and send them again."""
    error = f"ran past the stage time limit of {limit_s} s"
    unfinished = [run for run in runs if not run.done and not run.canceled]
    for run in unfinished:
        log.warning("job %s: %s %s; it will run again while attempts remain", run.job_id, run.stage, error)
        try:
            _time_out(run.job_id, run.stage, error)
        except TRANSIENT_ERRORS as unrecorded:
            # Its heartbeat has stopped: the sweeper sends the stage again once it goes stale.
            log.warning("job %s: could not record the time-out of %s: %s", run.job_id, run.stage, unrecorded)
            run.done = True
    _send_companions_again(runs[0], unfinished, countdown=1)
    if runs[0] in unfinished and not runs[0].done:
        # The next claim counts the attempt, and fails the job once they are spent.
        raise task.retry(countdown=1)


def _after_transient_error(task: Task, runs: list[StageRun], exc: BaseException) -> None:
    """Put the runs that had not finished back to pending without counting the attempt: the leader's task
    tries again with backoff, the others' stages are sent again (each then backs off on its own)."""
    leader = runs[0]
    will_retry = task.request.retries < MAX_TRANSIENT_RETRIES
    unfinished = [run for run in runs if not run.done and not run.canceled]
    for run in unfinished:
        retry = will_retry or run is not leader
        log.warning("job %s: %s hit a transient error (retry %s): %s", run.job_id, run.stage, retry, exc)
        try:
            _fail(run.job_id, run.stage, f"{type(exc).__name__}: {exc}", will_retry=retry)
        except TRANSIENT_ERRORS as unrecorded:
            # The database is down too: the stage stays marked running until its heartbeat goes stale.
            log.warning("job %s: could not record the error of %s: %s", run.job_id, run.stage, unrecorded)
    _send_companions_again(leader, unfinished)
    if leader in unfinished:
        if not will_retry:
            raise exc
        raise task.retry(exc=exc, countdown=_backoff(task)) from exc


def _send_companions_again(leader: StageRun, unfinished: list[StageRun], countdown: float = 0) -> None:
    """Send the stage of each unfinished companion again: its own message may be gone (it found the stage
    running here and stopped). A second message of one generation is harmless: only one may claim."""
    for run in unfinished:
        if run is not leader and not run.done:
            enqueue_stage(
                run.job_id,
                run.stage,
                preset=run.preset,
                seq=run.seq,
                priority=run.priority,
                request_id=run.request_id,
                traceparent=run.traceparent,
                countdown=countdown,
            )


def progress_reporter(*runs: StageRun) -> Callable[[float], None]:
    """A denoising callback for the runs sharing a pass: records their progress (throttled: live streams
    every PROGRESS_INTERVAL_S, rows every PROGRESS_ROW_INTERVAL_S), cancels those whose job was asked to
    cancel (the pass goes on for the others) and raises StageCanceled once none is left; raises
    StageTimedOut past their deadline."""
    redis_client = get_redis()
    deadline = min(run.deadline for run in runs)
    last_live = last_row = 0.0

    def report(fraction: float) -> None:
        nonlocal last_live, last_row
        live = [run for run in runs if not run.canceled]
        try:
            cancel_hint = bool(redis_client.exists(*(cancel_key(run.job_id) for run in live)))
        except RedisError:
            cancel_hint = False  # the rows below are the source of truth; Redis only makes the check cheap
        now = time.monotonic()
        if now > deadline:
            raise StageTimedOut()
        urgent = cancel_hint or fraction >= 1.0
        if not urgent and now - last_live < PROGRESS_INTERVAL_S:
            return
        last_live = now
        if urgent or now - last_row >= PROGRESS_ROW_INTERVAL_S:
            last_row = now
            with session_scope() as session:
                stage_ids = [run.stage_id for run in live]
                canceled = job_queries.record_progress(session, stage_ids=stage_ids, progress=fraction)
            for run in live:
                if run.stage_id in canceled:
                    log.info("job %s canceled during %s", run.job_id, run.stage)
                    _cancel(run.job_id)
                    run.canceled = True
            live = [run for run in live if not run.canceled]
            if not live:
                raise StageCanceled()
        for run in live:
            append_live(run.job_id, "progress", {"stage": run.stage, "progress": round(fraction, 4)})

    return report


def _peek_preset(job_id: uuid.UUID) -> str | None:
    with session_scope() as session:
        job = job_queries.get_job(session, job_id=job_id)
        return job.preset if job is not None else None


def _claim(job_id: uuid.UUID, stage_name: str, seq: int) -> StageRun | None:
    """Mark the stage running; None when it already succeeded (a redelivery, or a run of another job's batch
    did it), after sending the job on if no run of this generation did. Ignore stops the message."""
    max_attempts = get_settings().max_attempts
    run: StageRun | None = None
    stop = False
    send: _NextStage | None = None
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
                if stage.completed_seq != seq:
                    # Completed by a run of an older generation, which could not send the job on.
                    stage.completed_seq = seq
                    send = _next_stage(job, stage, seq)
            elif _running_elsewhere(stage):
                # Another worker runs it right now (this is a redelivery, a resend, or the stage runs in
                # another job's batch): running it here too would do the work twice. That run sends the job
                # on; should its worker die, its heartbeat stops and the sweeper sends the job again.
                log.info("job %s: %s is running elsewhere; dropping this message", job_id, stage_name)
                stop = True
            elif stage.attempts >= max_attempts:
                _fail_spent(job, stage, events)
                stop = True
            else:
                run = _start(job, stage, events)
    if send is not None:
        log.info("job %s: %s already done; sending it on", job_id, stage_name)
        _send_next(send)
        return None
    if stop or run is None:
        raise Ignore()
    return run


def _gather(leader: StageRun) -> list[StageRun]:
    """Claim other jobs' waiting runs of the leader's stage that can share its forward passes, up to
    ``IMAGEN_MAX_BATCH`` images in all, and record the batch on every run.

    Nothing waits when nothing else is waiting (a lone job on an idle worker starts at once); when some
    are, the worker waits ``IMAGEN_BATCH_WAIT_MS`` once for more. Higher priorities join first. A database
    error leaves the batch as gathered so far.
    """
    settings = get_settings()
    room = settings.max_batch - leader.images
    companions: list[StageRun] = []
    try:
        if room > 0:
            companions = _claim_companions(leader, room)
            room -= sum(run.images for run in companions)
            if companions and room > 0 and settings.batch_wait_ms > 0:
                time.sleep(settings.batch_wait_ms / 1000)
                companions += _claim_companions(leader, room)
        runs = [leader, *companions]
        with session_scope() as session:
            size = sum(run.images for run in runs)
            job_queries.record_batch(session, stage_ids=[run.stage_id for run in runs], size=size)
    except TRANSIENT_ERRORS as exc:
        log.warning(
            "job %s: could not gather a batch for %s (%s); running %d",
            leader.job_id,
            leader.stage,
            exc,
            len(companions) + 1,
        )
    if companions:
        log.info("job %s: %s runs with %d other jobs' runs", leader.job_id, leader.stage, len(companions))
    return companions


def _claim_companions(leader: StageRun, room: int) -> list[StageRun]:
    """Claim waiting runs of the leader's stage that fit in ``room`` images, in one transaction."""
    max_attempts = get_settings().max_attempts
    runs: list[StageRun] = []
    with job_transaction() as (session, events):
        candidates = job_queries.batch_candidates(
            session,
            stage=leader.stage,
            preset=leader.preset,
            params=leader.stage_params,
            exclude=leader.job_id,
            limit=room,
        )
        for job in candidates:
            stage = job.stage(leader.stage)
            earlier = job.stages[: stage.position]
            ready = all(s.status == StageStatus.SUCCEEDED for s in earlier) and stage.attempts < max_attempts
            images = _images(job.kind, job.input, leader.stage)
            if not ready or stage.status != StageStatus.PENDING or images > room:
                continue
            runs.append(_start(job, stage, events))
            room -= images
    return runs


def _start(job: Job, stage: JobStage, events: JobEvents) -> StageRun:
    """Mark a stage of a locked job running (an attempt) and describe the run."""
    first_start = job.status == JobStatus.QUEUED
    job_queries.mark_stage_running(job, stage)
    if first_start:
        events.started(job)
    events.stage_running(job, stage)
    previous = job.stages[stage.position - 1].name if stage.position > 0 else None
    stored_params = job.input.get("stages", {}).get(stage.name) if stage.name != ENCODE_TEXT else None
    return StageRun(
        job_id=job.id,
        tenant_id=job.tenant_id,
        kind=job.kind,
        stage=stage.name,
        stage_id=stage.id,
        preset=job.preset,
        spec=read_job_input(job.kind, job.input),
        meta=dict(job.meta),
        previous_stage=previous,
        earlier_outputs={s.name: list(s.outputs) for s in job.stages[: stage.position]},
        seq=job.dispatch_seq,
        priority=job.priority,
        request_id=job.request_id,
        traceparent=job.traceparent,
        stage_params=stored_params,
    )


def _images(kind: str, stored_input: dict[str, Any], stage: str) -> int:
    """The images (or prompts) a run of ``stage`` puts into a batch, from its job's stored input."""
    if kind != "generate" or stage == ENCODE_TEXT:
        return 1
    return int(stored_input.get("num_images", 1))


def _fail_spent(job: Job, stage: JobStage, events: JobEvents) -> None:
    """Fail a job whose stage used up its attempts."""
    reason = stage.error or "its worker stopped before it finished"
    stage.status = StageStatus.FAILED
    job_queries.finish_job(
        job, JobStatus.FAILED, error=f"stage {stage.name} did not complete after {stage.attempts} attempts: {reason}"
    )
    events.finished(job)


@dataclass(frozen=True)
class _NextStage:
    """Where a job goes once a stage completed: its next stage (None: finalizing), in generation ``seq``."""

    job_id: uuid.UUID
    stage: str | None
    preset: str
    seq: int
    priority: int
    request_id: str | None
    traceparent: str | None


def _next_stage(job: Job, stage: JobStage, seq: int) -> _NextStage:
    following = job.stages[stage.position + 1].name if stage.position + 1 < len(job.stages) else None
    return _NextStage(job.id, following, job.preset, seq, job.priority, job.request_id, job.traceparent)


def _send_next(target: _NextStage) -> None:
    """Send a job on to its next stage (a committed decision); a broker outage leaves it to the sweeper."""
    with session_scope() as session:
        send_on(
            session,
            target.job_id,
            target.stage,
            preset=target.preset,
            seq=target.seq,
            priority=target.priority,
            request_id=target.request_id,
            traceparent=target.traceparent,
        )


def _complete_and_send_on(run: StageRun) -> None:
    """Record a run's success, then send its job on; a job canceled or superseded meanwhile stops here."""
    target = _complete(run)
    run.done = True
    if target is not None:
        _send_next(target)


def _running_elsewhere(stage: JobStage) -> bool:
    """Whether a worker is running ``stage`` now: it is marked running and its heartbeat is fresh."""
    fresh_after = job_queries.stale_seconds_ago(get_settings().requeue_after_s)
    return stage.status == StageStatus.RUNNING and stage.heartbeat_at is not None and stage.heartbeat_at > fresh_after


def _complete(run: StageRun) -> _NextStage | None:
    """Record the stage's artifacts and success; returns where its job goes next, unless the job was
    canceled meanwhile, or moved on to a newer generation (whose own message then sends it on)."""
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=run.job_id, for_update=True)
        if job is None:
            return None
        for artifact in run.artifacts:
            job_queries.record_artifact(session, job_id=run.job_id, stage=run.stage, **artifact)
        stage = job.stage(run.stage)
        if stage.status == StageStatus.SUCCEEDED:
            return None  # completed by another run, which sent the job on
        job_queries.mark_stage_done(stage, outputs=run.outputs)
        stage.completed_seq = run.seq
        events.stage_done(job, stage)
        if stage.position + 1 < len(job.stages):
            job.stages[stage.position + 1].queued_at = job_queries.now()
        if job.cancel_requested and not JobStatus(job.status).is_terminal:
            job_queries.finish_job(job, JobStatus.CANCELED)
            events.finished(job)
        if job.dispatch_seq != run.seq or JobStatus(job.status).is_terminal:
            return None
        if stage.position + 1 == len(job.stages) and all(s.status == StageStatus.SUCCEEDED for s in job.stages):
            # The last stage finishes its job in this transaction, with no hop through the control queue;
            # the finalize task remains for a job whose last stage completed in an older generation.
            job_queries.finish_job(job, JobStatus.SUCCEEDED)
            events.finished(job)
            return None
        return _next_stage(job, stage, run.seq)


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


def _exit_worker(stage_ids: Sequence[uuid.UUID]) -> None:
    log.critical(
        "stages %s are %.0f s past their time limit and do not stop: exiting the worker, whose restart leaves"
        " them to the sweeper",
        ", ".join(map(str, stage_ids)),
        HARD_LIMIT_GRACE_S,
    )
    logging.shutdown()
    os._exit(70)  # EX_SOFTWARE; nothing of this process can be trusted to unwind


@contextmanager
def _heartbeat(
    stage_ids: Sequence[uuid.UUID],
    *,
    deadline: float,
    grace_s: float = HARD_LIMIT_GRACE_S,
    on_overrun: Callable[[Sequence[uuid.UUID]], None] = _exit_worker,
) -> Iterator[None]:
    """Refresh the heartbeat of the stages a batch runs; the sweeper re-enqueues stages whose beat stops.

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
                on_overrun(stage_ids)
                return
            try:
                with session_scope() as session:
                    job_queries.beat_heartbeat(session, stage_ids=stage_ids)
            except OperationalError as exc:
                log.warning("heartbeat of stages %s failed: %s", ", ".join(map(str, stage_ids)), exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{stage_ids[0]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _backoff(task: Task) -> float:
    """Seconds before the next try after a transient error: 1, 2, 4, ... up to a minute."""
    return float(min(2**task.request.retries, MAX_BACKOFF_S))
