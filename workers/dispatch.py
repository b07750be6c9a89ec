"""Build and send a job's cascade as a Celery chain, by task name (no model code is imported)."""

import logging
import uuid
from collections.abc import Sequence

from celery import chain
from celery.canvas import Signature
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from workers.celery_app import app
from workers.presets import Preset, StageKind, get_preset

log = logging.getLogger(__name__)

ENCODE_TEXT = "encode_text"
CAPTION = "caption"
EMBED = "embed"

# The stages every preset shares: stage name -> (task name, queue).
STAGE_TASKS = {
    ENCODE_TEXT: ("imagen.encode_text", "text"),
    CAPTION: ("imagen.caption", "caption"),
    EMBED: ("imagen.embed", "embed"),
}
# A cascade stage's task and queue follow from its kind: super-resolution stages of every kind and
# resolution share one task (which looks the stage up in the job's preset) and one queue.
KIND_TASKS: dict[StageKind, tuple[str, str]] = {
    "if": ("imagen.base", "base"),
    "if_sr": ("imagen.sr", "sr"),
    "sd_upscale": ("imagen.sr", "sr"),
}
FINALIZE_TASK = "imagen.finalize"

# Publishing gives up quickly when the broker is down: the job is already committed, and the
# sweeper enqueues it once the broker is back.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


def generate_stages(
    preset: Preset, resolution: int, *, caption: bool = False, index: bool = False
) -> list[tuple[str, str]]:
    """The (stage, queue) rows of a generate job: the text encoder, the cascade up to ``resolution``, then
    captioning and indexing of the final images when asked for."""
    names = [ENCODE_TEXT, *(spec.name for spec in preset.stages_up_to(resolution))]
    names += [CAPTION] * caption + [EMBED] * index
    return [(name, stage_task(preset, name)[1]) for name in names]


def stage_task(preset: Preset, stage: str) -> tuple[str, str]:
    """The (task name, queue) that runs ``stage`` of a job of ``preset``."""
    if stage in STAGE_TASKS:
        return STAGE_TASKS[stage]
    return KIND_TASKS[preset.stage(stage).kind]


def cascade_chain(job_id: uuid.UUID, stages: Sequence[str], *, preset: str, seq: int, priority: int) -> Signature:
    """The chain of immutable signatures that runs ``stages`` of a job of ``preset``, then finalizes it.

    Sent by name, the signatures would not know the tasks' ``ignore_result`` and Celery would subscribe
    to each result as it publishes: with Redis down, a submission would then wait out the result
    backend's reconnects and fail, where it should record the job and answer at once.
    """
    redis_priority = 9 - priority  # the API's 9 runs first; Redis serves 0 first
    preset_spec = get_preset(preset)
    steps = [(*stage_task(preset_spec, name), name) for name in stages] + [(FINALIZE_TASK, "control", "finalize")]
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
    except (KombuError, RedisError, OSError) as exc:
        log.warning("could not enqueue job %s (generation %d): %s; the sweeper will", job_id, seq, exc)
        return False
    return True
