"""Build and send a job's cascade as a Celery chain, by task name (no model code is imported)."""

import logging
import uuid
from collections.abc import Sequence

from celery import chain
from celery.canvas import Signature
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from workers.celery_app import app
from workers.presets import Preset

log = logging.getLogger(__name__)

ENCODE_TEXT = "encode_text"
CAPTION = "caption"
EMBED = "embed"

# Stage name -> (task name, queue). SR stages at every resolution share one task and queue.
STAGE_TASKS = {
    ENCODE_TEXT: ("imagen.encode_text", "text"),
    "base_64": ("imagen.base", "base"),
    "sr_256": ("imagen.sr", "sr"),
    "sr_1024": ("imagen.sr", "sr"),
    CAPTION: ("imagen.caption", "caption"),
    EMBED: ("imagen.embed", "embed"),
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
    return [(name, STAGE_TASKS[name][1]) for name in names]


def cascade_chain(job_id: uuid.UUID, stages: Sequence[str], *, seq: int, priority: int) -> Signature:
    """The chain of immutable signatures that runs ``stages`` of a job, then finalizes it."""
    redis_priority = 9 - priority  # the API's 9 runs first; Redis serves 0 first
    signatures = [
        app.signature(
            STAGE_TASKS[name][0],
            args=(str(job_id), name, seq),
            immutable=True,
            queue=STAGE_TASKS[name][1],
            priority=redis_priority,
        )
        for name in stages
    ]
    signatures.append(
        app.signature(
            FINALIZE_TASK, args=(str(job_id), "finalize", seq), immutable=True, queue="control", priority=redis_priority
        )
    )
    return chain(*signatures)


def enqueue_cascade(job_id: uuid.UUID, stages: Sequence[str], *, seq: int, priority: int) -> bool:
    """Send the chain to the broker; False (logged) when the broker cannot be reached."""
    try:
        cascade_chain(job_id, stages, seq=seq, priority=priority).apply_async(retry=True, retry_policy=_PUBLISH_RETRY)
    except (KombuError, RedisError, OSError) as exc:
        log.warning("could not enqueue job %s (generation %d): %s; the sweeper will", job_id, seq, exc)
        return False
    return True


# The request's names for stage parameters (ARCHITECTURE.md section 5) -> the cascade's stage names.
REQUEST_STAGE_KEYS = {"base": "base_64", "sr256": "sr_256", "sr1024": "sr_1024"}
