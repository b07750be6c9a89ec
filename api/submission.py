"""Turn a validated request into a job row, and a committed job into a chain on the broker."""

import secrets
from typing import Any

from sqlalchemy.orm import Session

from api.schemas import GenerateInput, JobCreate
from core.errors import InvalidInput
from db import jobs as job_queries
from db.models import ApiKey, Job
from workers.dispatch import REQUEST_STAGE_KEYS, enqueue_cascade, generate_stages
from workers.presets import Preset


def resolve_generate_input(data: GenerateInput, preset: Preset) -> dict[str, Any]:
    """The input as it will run: every stage's parameters filled in and checked, the seed fixed."""
    if data.caption:
        raise InvalidInput("captioning generated images is not available on this server yet", field="input.caption")
    if data.index:
        raise InvalidInput("indexing generated images is not available on this server yet", field="input.index")
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


def create_generate_job(session: Session, *, key: ApiKey, body: JobCreate, preset: Preset) -> Job:
    """Insert the job and its stage rows (not committed)."""
    resolved = resolve_generate_input(body.input, preset)
    job = job_queries.create_job(
        session,
        tenant_id=key.tenant_id,
        kind=body.kind,
        preset=preset.name,
        input=resolved,
        stages=generate_stages(preset, resolved["resolution"]),
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
