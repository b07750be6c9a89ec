"""Celery tasks: thin wrappers that re-read the job, check its state, run a stage, record the result.

Every task takes ``(job_id, stage, seq)``: ids only, never tensors or rows. ``seq`` is the job's dispatch
generation; a task of an older generation (a broker redelivery racing the sweeper) stops at once.
"""

import hashlib
import io
import logging
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
from celery.signals import worker_init, worker_process_init
from redis.exceptions import RedisError
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core.config import get_settings
from core.redis_client import cancel_key, get_redis
from db import jobs as job_queries
from db.models import JobStage, JobStatus, StageStatus
from db.session import session_scope
from storage.errors import StoreUnavailable
from storage.factory import process_store
from storage.keys import embeddings_key, image_key
from workers.celery_app import app
from workers.dispatch import ENCODE_TEXT
from workers.events import append_live, job_transaction

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


class StageCanceled(Exception):
    """Raised inside a denoising callback when the job was asked to cancel."""


@dataclass
class StageRun:
    """What a stage function needs about its job, read once when the stage is claimed."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    stage: str
    stage_id: uuid.UUID
    preset: str
    input: dict[str, Any]
    meta: dict[str, Any]
    previous_stage: str | None
    # Earlier stages' recorded outputs, by stage name (captions feed the index, for one).
    earlier_outputs: dict[str, list[dict[str, Any]]]
    outputs: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# The stage life cycle, shared by every stage task.


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
            if stage.attempts >= max_attempts:
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
                    input=dict(job.input),
                    meta=dict(job.meta),
                    previous_stage=previous,
                    earlier_outputs={s.name: list(s.outputs) for s in job.stages[: stage.position]},
                )
    if stop or run is None:
        raise Ignore()
    return run


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


def _fail(job_id: uuid.UUID, stage_name: str, error: str, *, retryable: bool) -> None:
    """Record a stage error: back to pending when it will be retried, else the job fails."""
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=job_id, for_update=True)
        if job is None or JobStatus(job.status).is_terminal:
            return
        stage = job.stage(stage_name)
        if retryable and stage.attempts < get_settings().max_attempts:
            job_queries.mark_stage_pending(stage, error=error)
            return
        stage.error = error
        job_queries.finish_job(job, JobStatus.FAILED, error=f"stage {stage_name} failed: {error}")
        events.finished(job)


def _cancel(job_id: uuid.UUID) -> None:
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=job_id, for_update=True)
        if job is not None and not JobStatus(job.status).is_terminal:
            job_queries.finish_job(job, JobStatus.CANCELED)
            events.finished(job)


@contextmanager
def _heartbeat(stage_id: uuid.UUID) -> Iterator[None]:
    """Refresh the stage's heartbeat while it runs; the sweeper re-enqueues stages whose beat stops."""
    interval = max(get_settings().requeue_after_s / 4, 0.5)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with session_scope() as session:
                    session.execute(
                        update(JobStage).where(JobStage.id == stage_id).values(heartbeat_at=job_queries.now())
                    )
            except OperationalError as exc:
                log.warning("heartbeat of stage %s failed: %s", stage_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{stage_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
        if not cancel_hint and fraction < 1.0 and now - last_write < PROGRESS_INTERVAL_S:
            return
        last_write = now
        with session_scope() as session:
            canceled = job_queries.record_progress(session, stage_id=run.stage_id, progress=fraction)
        if canceled:
            raise StageCanceled()
        append_live(run.job_id, "progress", {"stage": run.stage, "progress": round(fraction, 4)})

    return report


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
    preset = _peek_preset(jid)
    if preset is None:
        raise Ignore()
    # Load the models before claiming, so a long first load is not mistaken for a dead worker.
    load(preset, get_settings().resolved_models_dir)
    try:
        run = _claim(jid, stage_name, seq)
    except TRANSIENT_ERRORS as exc:
        raise task.retry(exc=exc, countdown=_backoff(task)) from exc
    if run is None:
        log.info("job %s: %s already done; continuing", job_id, stage_name)
        return
    started = time.monotonic()
    try:
        with _heartbeat(run.stage_id):
            work(run)
    except StageCanceled:
        log.info("job %s canceled during %s", job_id, stage_name)
        _cancel(jid)
        raise Ignore() from None
    except TRANSIENT_ERRORS as exc:
        log.warning("job %s: %s hit a transient error: %s", job_id, stage_name, exc)
        _fail(jid, stage_name, f"{type(exc).__name__}: {exc}", retryable=True)
        raise task.retry(exc=exc, countdown=_backoff(task)) from exc
    except Exception as exc:
        _fail(jid, stage_name, f"{type(exc).__name__}: {exc}", retryable=False)
        raise
    _complete(run, seq)
    log.info("job %s: %s done in %.2f s", job_id, stage_name, time.monotonic() - started)


def _backoff(task: Task) -> float:
    return float(min(2**task.request.retries, 30))


# ---------------------------------------------------------------------------------------------------
# The stages.


def _store_png(run: StageRun, index: int, png: bytes, *, width: int, height: int, seed: int) -> None:
    key = image_key(run.job_id, run.stage, index)
    process_store().put(key, png, "image/png")
    digest = hashlib.sha256(png).hexdigest()
    run.artifacts.append(
        dict(
            index=index,
            key=key,
            content_type="image/png",
            size_bytes=len(png),
            sha256=digest,
            width=width,
            height=height,
            seed=seed,
        )
    )
    run.outputs.append({"index": index, "key": key, "width": width, "height": height, "seed": seed})


def _load_cascade(preset: str, models_dir: Path) -> object:
    from workers.pipelines import get_cascade

    return get_cascade(preset, models_dir)


def _load_captioner(preset: str, models_dir: Path) -> object:
    from workers.vision_models import get_captioner

    return get_captioner(preset, models_dir)


def _load_embedder(preset: str, models_dir: Path) -> object:
    from workers.vision_models import get_embedder

    return get_embedder(preset, models_dir)


def _final_image_keys(run: StageRun) -> list[str]:
    """The images a stage after the cascade works on: the job's input image, or the cascade's last images."""
    if run.kind != "generate":
        return [run.input["image"]["key"]]
    from workers.presets import get_preset

    final = next(s.name for s in get_preset(run.preset).stages if s.resolution == run.input["resolution"])
    return [image_key(run.job_id, final, i) for i in range(int(run.input["num_images"]))]


def _read_images(keys: list[str]) -> list[Any]:
    """RGB images from the store: stage PNGs, or client uploads the API already checked (any format)."""
    import PIL.Image

    images = []
    for key in keys:
        with PIL.Image.open(io.BytesIO(process_store().get(key))) as opened:
            images.append(opened.convert("RGB"))
    return images


def _encode_text(run: StageRun) -> None:
    from workers import cascade
    from workers.pipelines import get_cascade

    pipes = get_cascade(run.preset, get_settings().resolved_models_dir)
    report = progress_reporter(run)
    embeds = cascade.encode_prompt(pipes, run.input["prompt"], run.input.get("negative_prompt"))
    data = cascade.embeds_to_bytes(embeds)
    key = embeddings_key(run.job_id)
    process_store().put(key, data, "application/octet-stream")
    run.artifacts.append(
        dict(
            index=0,
            key=key,
            content_type="application/octet-stream",
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
    )
    run.outputs.append({"index": 0, "key": key})
    report(1.0)


def _check_stage_kind(run: StageRun, *, base: bool) -> None:
    """A stage's task follows from its kind in the job's preset; a message for another kind is a mistake."""
    from workers.presets import get_preset

    spec = get_preset(run.preset).stage(run.stage)
    if spec.is_base != base:
        task = "base" if base else "super-resolution"
        raise ValueError(f"stage {run.stage} of preset {run.preset!r} is of kind {spec.kind!r}, not a {task} stage")


def _base(run: StageRun) -> None:
    from workers import cascade
    from workers.pipelines import get_cascade

    _check_stage_kind(run, base=True)
    pipes = get_cascade(run.preset, get_settings().resolved_models_dir)
    store = process_store()
    embeds = cascade.embeds_from_bytes(store.get(embeddings_key(run.job_id)))
    params = run.input["stages"][run.stage]
    seed = int(run.input["seed"])
    images = cascade.run_base(
        pipes,
        embeds,
        num_images=int(run.input["num_images"]),
        seed=seed,
        steps=int(params["steps"]),
        guidance_scale=float(params["guidance_scale"]),
        on_progress=progress_reporter(run),
    )
    for index, image in enumerate(images):
        _store_png(run, index, cascade.image_to_png(image), width=image.width, height=image.height, seed=seed + index)


def _super_resolve(run: StageRun) -> None:
    from workers import cascade
    from workers.pipelines import get_cascade

    _check_stage_kind(run, base=False)
    if run.previous_stage is None or run.previous_stage == ENCODE_TEXT:
        raise ValueError(f"stage {run.stage} needs an image stage before it, got {run.previous_stage!r}")
    pipes = get_cascade(run.preset, get_settings().resolved_models_dir)
    store = process_store()
    embeds = cascade.embeds_from_bytes(store.get(embeddings_key(run.job_id)))
    num_images = int(run.input["num_images"])
    low_res = [cascade.png_to_image(store.get(image_key(run.job_id, run.previous_stage, i))) for i in range(num_images)]
    params = run.input["stages"][run.stage]
    seed = int(run.input["seed"])
    images = cascade.run_sr(
        pipes,
        run.stage,
        low_res,
        embeds,
        run.input["prompt"],
        run.input.get("negative_prompt"),
        seed=seed,
        steps=int(params["steps"]),
        guidance_scale=float(params["guidance_scale"]),
        noise_level=int(params["noise_level"]),
        on_progress=progress_reporter(run),
    )
    for index, image in enumerate(images):
        _store_png(run, index, cascade.image_to_png(image), width=image.width, height=image.height, seed=seed + index)


def _caption(run: StageRun) -> None:
    from workers.captioning import caption_images

    captioner: Any = _load_captioner(run.preset, get_settings().resolved_models_dir)
    report = progress_reporter(run)
    images = _read_images(_final_image_keys(run))
    captions = caption_images(
        captioner,
        images,
        max_new_tokens=int(run.input.get("max_new_tokens", 30)),
        num_beams=int(run.input.get("num_beams", 1)),
    )
    run.outputs.extend({"index": i, "caption": caption} for i, caption in enumerate(captions))
    report(1.0)


def _embed(run: StageRun) -> None:
    from db.search import ensure_vector_index, upsert_embedding
    from workers.embedding import embed_images, embed_texts

    embedder: Any = _load_embedder(run.preset, get_settings().resolved_models_dir)
    report = progress_reporter(run)
    keys = _final_image_keys(run)
    vectors = embed_images(embedder, _read_images(keys))
    if run.kind == "generate":
        text, collection = run.input["prompt"], "default"
        captions = {o["index"]: o["caption"] for o in run.earlier_outputs.get("caption", [])}
    else:
        text, collection, captions = run.input.get("text"), run.input["collection"], {}
    text_vector = embed_texts(embedder, [text])[0] if text else None
    with session_scope() as session:
        ensure_vector_index(session, model=embedder.model_id, dim=embedder.dim)
    with session_scope() as session:
        for index, (key, vector) in enumerate(zip(keys, vectors, strict=True)):
            embedding_id = upsert_embedding(
                session,
                tenant_id=run.tenant_id,
                job_id=run.job_id,
                collection=collection,
                model=embedder.model_id,
                embedding=vector,
                image_key=key,
                text_embedding=text_vector,
                caption=captions.get(index),
                text_value=text,
                meta=run.meta,
            )
            run.outputs.append({"index": index, "embedding_id": str(embedding_id), "collection": collection})
    report(1.0)


# Stages are retried by hand (self.retry) on transient errors only; a redelivered message after a
# worker loss is counted by the attempts column, not by Celery.
_TASK_OPTIONS: dict[str, Any] = {"bind": True, "max_retries": None, "acks_late": True}


@app.task(name="imagen.encode_text", **_TASK_OPTIONS)
def encode_text(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Encode the prompt once with the frozen text encoder; later stages reuse the embeddings."""
    run_stage(self, job_id, stage, seq, _encode_text, _load_cascade)


@app.task(name="imagen.base", **_TASK_OPTIONS)
def base(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Stage I: text-conditional diffusion at the preset's base resolution."""
    run_stage(self, job_id, stage, seq, _base, _load_cascade)


@app.task(name="imagen.sr", **_TASK_OPTIONS)
def super_resolution(self: Task, job_id: str, stage: str, seq: int) -> None:
    """A super-resolution stage of any kind and resolution, conditioned on the previous image and the text."""
    run_stage(self, job_id, stage, seq, _super_resolve, _load_cascade)


@app.task(name="imagen.caption", **_TASK_OPTIONS)
def caption(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Describe an image (or a generate job's final images) in words with GIT."""
    run_stage(self, job_id, stage, seq, _caption, _load_captioner)


@app.task(name="imagen.embed", **_TASK_OPTIONS)
def embed(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Add an image (or a generate job's final images) to the tenant's search index."""
    run_stage(self, job_id, stage, seq, _embed, _load_embedder)


@app.task(name="imagen.embed_query", ignore_result=False, acks_late=False)
def embed_query(preset: str, text: str | None = None, image_key: str | None = None) -> dict[str, Any]:
    """A search query's vector, for the API (which loads no model): ``{"model", "vector"}``."""
    from workers.embedding import embed_images, embed_texts

    embedder: Any = _load_embedder(preset, get_settings().resolved_models_dir)
    if text is not None:
        vector = embed_texts(embedder, [text])[0]
    elif image_key is not None:
        vector = embed_images(embedder, _read_images([image_key]))[0]
    else:
        raise ValueError("embed_query needs text or image_key, got neither")
    return {"model": embedder.model_id, "vector": vector}


@app.task(name="imagen.finalize", bind=True, acks_late=True)
def finalize(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Mark the job succeeded once every stage has."""
    with job_transaction() as (session, events):
        job = job_queries.get_job(session, job_id=uuid.UUID(job_id), for_update=True)
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


@app.task(name="imagen.sweep", acks_late=True)
def sweep() -> None:
    """Re-enqueue jobs the broker lost (see workers.sweeper)."""
    from workers.sweeper import sweep_lost_jobs

    sweep_lost_jobs()
    from workers.webhooks import sweep_due_webhooks

    sweep_due_webhooks()


@worker_init.connect
@worker_process_init.connect
def _configure_torch(**_: Any) -> None:
    """Pin torch's thread count when configured: a fixed count keeps seeded outputs bit-identical."""
    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
