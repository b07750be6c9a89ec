"""Turn a validated request into a job row: its input resolved against the model preset, its image stored,
its webhook checked; and replay a request that carried an ``Idempotency-Key`` already seen."""

import hashlib
import json
import secrets
from typing import Any

from sqlalchemy.orm import Session

from api.callers import Caller
from api.images import resolve_image_input
from api.schemas import (
    CaptionJobCreate,
    GenerateInput,
    GenerateJobCreate,
    JobCreate,
    StageParameters,
    WebhookSpec,
)
from core.address_guard import FetchError, check_url
from core.config import Settings
from core.errors import Conflict, InvalidInput
from core.job_input import (
    DEFAULT_OUTPUT_QUALITY,
    LOSSLESS_FORMATS,
    CaptionSpec,
    GenerateSpec,
    IndexSpec,
    JobSpec,
    stored_input,
)
from core.limits import MAX_SEED
from core.logs import current_request_id
from core.presets import Preset
from core.routing import generate_stages, single_stage
from core.tracing import current_traceparent
from db import jobs as job_queries
from db.idempotency import find_idempotency_key
from db.models import Job
from storage.object_store import ObjectStore


def resolve_generate_input(data: GenerateInput, preset: Preset) -> GenerateSpec:
    """The input as it will run: the resolution and every stage's parameters filled in and checked, the seed fixed."""
    resolution = data.resolution if data.resolution is not None else preset.final_resolution
    resolutions = [spec.resolution for spec in preset.stages]
    if resolution not in resolutions:
        raise InvalidInput(
            f"input.resolution must be one of {resolutions} for model preset {preset.name!r}, got {resolution}",
            field="input.resolution",
        )
    chosen = _chosen_params(data, preset)
    stages = preset.resolve_params(resolution, chosen)
    for spec in preset.stages_up_to(resolution):
        noise = stages[spec.name].noise_level
        if noise is not None and spec.max_noise_level is not None and noise > spec.max_noise_level:
            field = f"input.stages.{preset.request_key(spec)}.noise_level"
            raise InvalidInput(
                f"{field} must be between 0 and {spec.max_noise_level} for preset {preset.name!r}, got {noise}",
                field=field,
            )
    if data.output_format in LOSSLESS_FORMATS and data.output_quality is not None:
        raise InvalidInput(
            f"input.output_quality applies to webp and jpeg only; {data.output_format} is lossless"
            " (leave output_quality out, or choose output_format webp or jpeg)",
            field="input.output_quality",
        )
    quality = None
    if data.output_format not in LOSSLESS_FORMATS:
        quality = data.output_quality if data.output_quality is not None else DEFAULT_OUTPUT_QUALITY
    return GenerateSpec(
        prompt=data.prompt,
        negative_prompt=data.negative_prompt,
        num_images=data.num_images,
        seed=data.seed if data.seed is not None else secrets.randbelow(MAX_SEED + 1),
        resolution=resolution,
        stages=stages,
        caption=data.caption,
        index=data.index,
        output_format=data.output_format,
        output_quality=quality,
    )


def _chosen_params(data: GenerateInput, preset: Preset) -> dict[str, StageParameters]:
    """The request's ``input.stages`` by stage name; every key names a stage of the preset, and the base stage
    gets no noise level."""
    by_key = preset.request_keys()
    allowed = ", ".join(by_key)
    chosen: dict[str, StageParameters] = {}
    for request_key, given in data.stages.items():
        spec = by_key.get(request_key)
        if spec is None:
            raise InvalidInput(
                f"input.stages.{request_key} is not a stage of model preset {preset.name!r}; allowed keys: {allowed}",
                field=f"input.stages.{request_key}",
            )
        if spec.is_base and given.noise_level is not None:
            raise InvalidInput(
                f"input.stages.{request_key}.noise_level: the base stage takes no noise level"
                " (only super-resolution stages do)",
                field=f"input.stages.{request_key}.noise_level",
            )
        chosen[spec.name] = given
    return chosen


def create_job_row(
    session: Session, *, key: Caller, body: JobCreate, preset: Preset, store: ObjectStore, settings: Settings
) -> Job:
    """Validate the request against the preset, store its image if any, insert the job (not committed).

    The row says its chain was sent already: the caller sends it right after the commit, and takes that back
    if the broker cannot be reached (``workers.dispatch.dispatch_new_job``), which saves every submission a
    second transaction.
    """
    spec: JobSpec
    if isinstance(body, GenerateJobCreate):
        spec = resolve_generate_input(body.input, preset)
        stages = generate_stages(preset, spec.resolution, caption=spec.caption, index=spec.index)
    else:
        # Caption and index jobs: one stage over one image, stored (or found) before the job is recorded.
        image = resolve_image_input(
            session, body.input.image, tenant_id=key.tenant_id, store=store, settings=settings, field="input.image"
        )
        options = body.input.model_dump(exclude={"image"})
        spec_type = CaptionSpec if isinstance(body, CaptionJobCreate) else IndexSpec
        spec = spec_type(image=image, **options)
        stages = single_stage(body.kind)
    webhook = checked_webhook(body.webhook, settings) if body.webhook is not None else None
    job = job_queries.create_job(
        session,
        tenant_id=key.tenant_id,
        kind=body.kind,
        preset=preset.name,
        input=stored_input(spec),
        stages=stages,
        priority=body.priority,
        meta=body.metadata,
        webhook=webhook,
        queued_at=job_queries.now(),
        dispatched_at=job_queries.now(),
        request_id=current_request_id(),
        traceparent=current_traceparent(),
    )
    return job


def checked_webhook(spec: WebhookSpec, settings: Settings) -> dict[str, Any]:
    """The job's webhook settings, once its URL passed the address guard (scheme, port, addresses)."""
    try:
        check_url(spec.url, allow_private=settings.webhook_allow_private, allowed_ports=settings.webhook_allowed_ports)
    except FetchError as exc:
        raise InvalidInput(f"webhook.url: {exc}", field="webhook.url") from None
    return {"url": spec.url, "events": sorted(set(spec.events))}


# Input fields added after keys were first remembered, with their defaults: left out of the hash while they
# hold them, so a request hashes as it did before they existed and its retry still finds its job.
_LATER_DEFAULTS = {"output_format": "png", "output_quality": None}


def request_fingerprint(body: JobCreate) -> str:
    """A hash of the request as parsed, so formatting and key order do not matter."""
    data = body.model_dump(mode="json")
    for name, default in _LATER_DEFAULTS.items():
        if name in data["input"] and data["input"][name] == default:
            del data["input"][name]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotent_replay(session: Session, *, key: Caller, idempotency_key: str, fingerprint: str) -> Job | None:
    """The job an earlier request with this key created; a Conflict if that request was another one."""
    row = find_idempotency_key(session, tenant_id=key.tenant_id, key=idempotency_key)
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise Conflict(
            "this Idempotency-Key was used with a different request body; use a new key for a new request",
            field="Idempotency-Key",
        )
    return job_queries.get_job(session, job_id=row.job_id, tenant_id=key.tenant_id)
