"""Turn a validated request into a job row, and a committed job into a chain on the broker."""

import secrets
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.images import ImageInput, resolve_image
from api.schemas import CaptionJobCreate, GenerateInput, GenerateJobCreate, JobCreate
from core.config import Settings
from core.errors import InvalidInput
from db import jobs as job_queries
from db.models import ApiKey, Artifact, Job
from storage.object_store import ObjectStore
from workers.dispatch import CAPTION, EMBED, REQUEST_STAGE_KEYS, STAGE_TASKS, enqueue_cascade, generate_stages
from workers.presets import Preset


def resolve_generate_input(data: GenerateInput, preset: Preset) -> dict[str, Any]:
    """The input as it will run: every stage's parameters filled in and checked, the seed fixed."""
    resolutions = [spec.resolution for spec in preset.stages]
    if data.resolution not in resolutions:
        raise InvalidInput(
            f"input.resolution must be one of {resolutions} for model preset {preset.name!r}, got {data.resolution}",
            field="input.resolution",
        )
    overrides = data.stages.model_dump()
    stages: dict[str, dict[str, Any]] = {}
    for request_key, stage_name in REQUEST_STAGE_KEYS.items():
        spec = preset.stage(stage_name)
        if spec.resolution > data.resolution:
            continue  # the cascade stops before this stage; its parameters have nothing to steer
        given = overrides.get(request_key) or {}
        params: dict[str, Any] = {
            "steps": given.get("steps") or spec.default_steps,
            "guidance_scale": given["guidance_scale"]
            if given.get("guidance_scale") is not None
            else spec.default_guidance,
        }
        if spec.max_noise_level is not None:
            noise = given.get("noise_level")
            noise = (spec.default_noise_level or 0) if noise is None else noise
            if noise > spec.max_noise_level:
                raise InvalidInput(
                    f"input.stages.{request_key}.noise_level must be between 0 and {spec.max_noise_level} "
                    f"for preset {preset.name!r}, got {noise}",
                    field=f"input.stages.{request_key}.noise_level",
                )
            params["noise_level"] = noise
        stages[stage_name] = params
    return {
        "prompt": data.prompt,
        "negative_prompt": data.negative_prompt,
        "num_images": data.num_images,
        "seed": data.seed if data.seed is not None else secrets.randbelow(2**32),
        "resolution": data.resolution,
        "stages": stages,
        "caption": data.caption,
        "index": data.index,
    }


def image_artifact_key(
    session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, stage: str, index: int
) -> str | None:
    """The object key of an image one of the tenant's jobs produced, or None."""
    return session.scalar(
        select(Artifact.key)
        .join(Job, Job.id == Artifact.job_id)
        .where(
            Job.tenant_id == tenant_id,
            Artifact.job_id == job_id,
            Artifact.stage == stage,
            Artifact.index == index,
            Artifact.content_type.like("image/%"),
        )
    )


def resolve_image_input(
    session: Session, image: ImageInput, *, key: ApiKey, store: ObjectStore, settings: Settings, field: str
) -> dict[str, Any]:
    """Store (or find) the image a request names; what the job's input records of it."""
    stored = resolve_image(
        image,
        store=store,
        allow_private=settings.webhook_allow_private,
        find_artifact=lambda job_id, stage, index: image_artifact_key(
            session, tenant_id=key.tenant_id, job_id=job_id, stage=stage, index=index
        ),
        field=field,
    )
    source = next(name for name in ("base64", "url", "artifact") if getattr(image, name, None) is not None)
    return {
        "key": stored.key,
        "sha256": stored.sha256,
        "width": stored.width,
        "height": stored.height,
        "mime": stored.mime,
        "source": source,
    }


def create_job_row(
    session: Session, *, key: ApiKey, body: JobCreate, preset: Preset, store: ObjectStore, settings: Settings
) -> Job:
    """Validate the request against the preset, store its image if any, insert the job (not committed)."""
    stages: list[tuple[str, str]]
    if isinstance(body, GenerateJobCreate):
        resolved = resolve_generate_input(body.input, preset)
        stages = generate_stages(preset, resolved["resolution"], caption=body.input.caption, index=body.input.index)
    elif isinstance(body, CaptionJobCreate):
        resolved = {
            "image": resolve_image_input(
                session, body.input.image, key=key, store=store, settings=settings, field="input.image"
            ),
            "max_new_tokens": body.input.max_new_tokens,
            "num_beams": body.input.num_beams,
        }
        stages = [(CAPTION, STAGE_TASKS[CAPTION][1])]
    else:
        resolved = {
            "image": resolve_image_input(
                session, body.input.image, key=key, store=store, settings=settings, field="input.image"
            ),
            "text": body.input.text,
            "collection": body.input.collection,
        }
        stages = [(EMBED, STAGE_TASKS[EMBED][1])]
    job = job_queries.create_job(
        session,
        tenant_id=key.tenant_id,
        kind=body.kind,
        preset=preset.name,
        input=resolved,
        stages=stages,
        priority=body.priority,
        meta=body.metadata,
    )
    job.stages[0].queued_at = job_queries.now()
    return job


def enqueue_committed(session: Session, job: Job) -> None:
    """Send a committed job's remaining stages to the broker and record that it got there.

    If the broker is down the job stays committed and undispatched; the sweeper sends it later.
    """
    first = job_queries.first_unfinished_stage(job)
    stages = [s.name for s in job.stages[first.position :]] if first is not None else []
    if enqueue_cascade(job.id, stages, seq=job.dispatch_seq, priority=job.priority):
        job_queries.mark_dispatched(session, job_id=job.id, seq=job.dispatch_seq)
        session.commit()
