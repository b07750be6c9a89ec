"""Queues, tasks and which of them runs each stage of a job. Constants and lookups: creates no Celery app.

A job is a list of stages. The cascade's stages come from its preset, and each one's task and queue follow
from its kind; the text encoder, the captioner and the embedder are stages every preset shares.
"""

from core.presets import Preset, StageKind

# One queue per kind of work, so each GPU pool can serve only the stages that fit it.
QUEUES = ("text", "base", "sr", "caption", "embed", "webhooks", "control")
# What a GPU worker serves.
MODEL_QUEUES = ("text", "base", "sr", "caption", "embed")
# Finishing jobs and sweeping: short CPU work that every tenant's job completion waits on.
CONTROL_QUEUES = ("control",)
# Webhook deliveries: network waits up to the webhook timeout, on a worker of their own (a threads pool),
# so that a stalled receiver holds up other deliveries at most, never a job's completion.
WEBHOOK_QUEUES = ("webhooks",)

# The stages every preset shares, by name.
ENCODE_TEXT = "encode_text"
CAPTION = "caption"
EMBED = "embed"

# Task names, as workers register them and the dispatcher sends them.
ENCODE_TEXT_TASK = "imagen.encode_text"
BASE_TASK = "imagen.base"
SR_TASK = "imagen.sr"
CAPTION_TASK = "imagen.caption"
EMBED_TASK = "imagen.embed"
EMBED_QUERY_TASK = "imagen.embed_query"
FINALIZE_TASK = "imagen.finalize"
SWEEP_TASK = "imagen.sweep"
DELIVER_WEBHOOK_TASK = "imagen.deliver_webhook"

# The shared stages: stage name -> (task name, queue).
STAGE_TASKS: dict[str, tuple[str, str]] = {
    ENCODE_TEXT: (ENCODE_TEXT_TASK, "text"),
    CAPTION: (CAPTION_TASK, "caption"),
    EMBED: (EMBED_TASK, "embed"),
}
# A cascade stage's task and queue follow from its kind: super-resolution stages of every kind and
# resolution share one task (which looks the stage up in the job's preset) and one queue.
KIND_TASKS: dict[StageKind, tuple[str, str]] = {
    "if": (BASE_TASK, "base"),
    "if_sr": (SR_TASK, "sr"),
    "sd_upscale": (SR_TASK, "sr"),
}

# Every task's queue, for Celery's router.
TASK_QUEUES: dict[str, str] = {
    **{task: queue for task, queue in (*STAGE_TASKS.values(), *KIND_TASKS.values())},
    EMBED_QUERY_TASK: "embed",
    FINALIZE_TASK: "control",
    SWEEP_TASK: "control",
    DELIVER_WEBHOOK_TASK: "webhooks",
}


def stage_task(preset: Preset, stage: str) -> tuple[str, str]:
    """The (task name, queue) that runs ``stage`` of a job of ``preset``."""
    if stage in STAGE_TASKS:
        return STAGE_TASKS[stage]
    return KIND_TASKS[preset.stage(stage).kind]


def generate_stages(
    preset: Preset, resolution: int, *, caption: bool = False, index: bool = False
) -> list[tuple[str, str]]:
    """The (stage, queue) rows of a generate job: the text encoder, the cascade up to ``resolution``, then
    captioning and indexing of the final images when asked for."""
    names = [ENCODE_TEXT, *(spec.name for spec in preset.stages_up_to(resolution))]
    names += [CAPTION] * caption + [EMBED] * index
    return [(name, stage_task(preset, name)[1]) for name in names]


def single_stage(kind: str) -> list[tuple[str, str]]:
    """The (stage, queue) row of a caption or index job: one stage over one image."""
    stage = {"caption": CAPTION, "index": EMBED}[kind]
    return [(stage, STAGE_TASKS[stage][1])]
