"""The Celery tasks, registered by name: each one only hands its arguments to the code that does the work.

Stage tasks take ``(job_id, stage, seq)``: ids only, never tensors or rows (see ``lifecycle``). The text
encoder and the denoising stages run in batches across jobs (``batch=True``). Stages are retried by hand
(``self.retry``) on transient errors only; a message redelivered after a worker loss is counted by the
attempts column, not by Celery.
"""

import uuid
from typing import Any

from celery import Task
from celery.signals import celeryd_after_setup, worker_init, worker_process_init, worker_shutdown

from core import model_loads
from core.config import get_settings
from core.routing import (
    BASE_TASK,
    CAPTION_TASK,
    DELIVER_WEBHOOK_TASK,
    EMBED_QUERY_TASK,
    EMBED_TASK,
    ENCODE_TEXT_TASK,
    FINALIZE_TASK,
    SR_TASK,
    SWEEP_TASK,
)
from core.tracing import flush_tracing, setup_tracing
from workers import control, stages, webhooks
from workers.celery_app import app
from workers.lifecycle import run_stage

_STAGE_OPTIONS: dict[str, Any] = {"bind": True, "max_retries": None, "acks_late": True}


@app.task(name=ENCODE_TEXT_TASK, **_STAGE_OPTIONS)
def encode_text(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Encode the prompt once with the frozen text encoder; later stages reuse the embeddings."""
    run_stage(self, job_id, stage, seq, stages.encode_text, stages.load_stage_models, batch=True)


@app.task(name=BASE_TASK, **_STAGE_OPTIONS)
def base(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Stage I: text-conditional diffusion at the preset's base resolution."""
    run_stage(self, job_id, stage, seq, stages.base, stages.load_stage_models, batch=True)


@app.task(name=SR_TASK, **_STAGE_OPTIONS)
def super_resolution(self: Task, job_id: str, stage: str, seq: int) -> None:
    """A super-resolution stage of any kind and resolution, conditioned on the previous image and the text."""
    run_stage(self, job_id, stage, seq, stages.super_resolve, stages.load_stage_models, batch=True)


@app.task(name=CAPTION_TASK, **_STAGE_OPTIONS)
def caption(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Describe an image (or a generate job's final images) in words with GIT."""
    run_stage(self, job_id, stage, seq, stages.caption, stages.load_captioner)


@app.task(name=EMBED_TASK, **_STAGE_OPTIONS)
def embed(self: Task, job_id: str, stage: str, seq: int) -> None:
    """Add an image (or a generate job's final images) to the tenant's search index."""
    run_stage(self, job_id, stage, seq, stages.embed, stages.load_embedder)


@app.task(name=EMBED_QUERY_TASK, ignore_result=False, acks_late=False)
def embed_query(preset: str, text: str | None = None, image_key: str | None = None) -> dict[str, Any]:
    """A search query's vector, for the API (which loads no model): ``{"model", "vector"}``."""
    return stages.embed_query(preset, text, image_key)


@app.task(name=FINALIZE_TASK, acks_late=True)
def finalize(job_id: str, stage: str, seq: int) -> None:
    """Mark the job succeeded once every stage has."""
    control.finalize_job(uuid.UUID(job_id), seq)


@app.task(name=SWEEP_TASK, acks_late=True)
def sweep() -> None:
    """Re-enqueue jobs and webhook deliveries the broker lost (see workers.sweeper)."""
    control.sweep()


@app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True)
def deliver_webhook(event_id: str) -> None:
    """Deliver one outbox event: POST it, log the attempt, then settle it or schedule the next attempt."""
    webhooks.deliver_event(event_id)


@worker_init.connect
@worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    """Trace the tasks this worker runs, and the messages they send, when IMAGEN_OTLP_ENDPOINT is set."""
    setup_tracing("worker", celery=True)


@celeryd_after_setup.connect
def _record_node_name(sender: Any = None, **_: Any) -> None:
    """The dashboard lists each model under the worker (node name) that holds it."""
    model_loads.set_node_name(str(sender))


@worker_shutdown.connect
def _flush_tracing(**_: Any) -> None:
    flush_tracing()


@worker_init.connect
@worker_process_init.connect
def _configure_torch(**_: Any) -> None:
    """Pin torch's thread count when configured: a fixed count keeps seeded outputs bit-identical."""
    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
