"""Turn a validated request into a job row, and a committed job into a chain on the broker."""

import hashlib
import json
import secrets
import time
import uuid
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.images import ImageInput, resolve_image
from api.schemas import CaptionJobCreate, GenerateInput, GenerateJobCreate, JobCreate, StageParameters
from core.address_guard import FetchError, check_url
from core.config import Settings
from core.errors import Conflict, InvalidInput
from core.redis_client import get_redis
from db import jobs as job_queries
from db.models import ApiKey, Artifact, IdempotencyKey, Job, JobStatus
from storage.object_store import ObjectStore
from workers.dispatch import CAPTION, EMBED, STAGE_TASKS, enqueue_cascade, generate_stages
from workers.presets import Preset, StageSpec


def resolve_generate_input(data: GenerateInput, preset: Preset) -> dict[str, Any]:
    """The input as it will run: the resolution and every stage's parameters filled in and checked, the seed fixed."""
    resolution = data.resolution if data.resolution is not None else preset.final_resolution
    resolutions = [spec.resolution for spec in preset.stages]
    if resolution not in resolutions:
        raise InvalidInput(
            f"input.resolution must be one of {resolutions} for model preset {preset.name!r}, got {resolution}",
            field="input.resolution",
        )
    by_key = preset.request_keys()
    _check_stage_keys(data, preset, by_key)
    stages: dict[str, dict[str, Any]] = {}
    for request_key, spec in by_key.items():
        if spec.resolution > resolution:
            continue  # the cascade stops before this stage; its parameters have nothing to steer
        given = data.stages[request_key] if request_key in data.stages else StageParameters()
        params: dict[str, Any] = {
            "steps": given.steps or spec.default_steps,
            "guidance_scale": given.guidance_scale if given.guidance_scale is not None else spec.default_guidance,
        }
        if spec.max_noise_level is not None:
            noise = given.noise_level
            noise = (spec.default_noise_level or 0) if noise is None else noise
            if noise > spec.max_noise_level:
                raise InvalidInput(
                    f"input.stages.{request_key}.noise_level must be between 0 and {spec.max_noise_level} "
                    f"for preset {preset.name!r}, got {noise}",
                    field=f"input.stages.{request_key}.noise_level",
                )
            params["noise_level"] = noise
        stages[spec.name] = params
    return {
        "prompt": data.prompt,
        "negative_prompt": data.negative_prompt,
        "num_images": data.num_images,
        "seed": data.seed if data.seed is not None else secrets.randbelow(2**32),
        "resolution": resolution,
        "stages": stages,
        "caption": data.caption,
        "index": data.index,
    }


def _check_stage_keys(data: GenerateInput, preset: Preset, by_key: dict[str, StageSpec]) -> None:
    """Every key of ``input.stages`` names a stage of the preset, and the base stage gets no noise level."""
    allowed = ", ".join(by_key)
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
        allow_private=settings.image_url_allow_private,
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
    else:
        # Caption and index jobs: one stage over one image, stored (or found) before the job is recorded.
        image = resolve_image_input(
            session, body.input.image, key=key, store=store, settings=settings, field="input.image"
        )
        resolved = {"image": image, **body.input.model_dump(exclude={"image"})}
        stage = CAPTION if isinstance(body, CaptionJobCreate) else EMBED
        stages = [(stage, STAGE_TASKS[stage][1])]
    webhook = None
    if body.webhook is not None:
        try:
            check_url(body.webhook.url, allow_private=settings.webhook_allow_private)
        except FetchError as exc:
            raise InvalidInput(f"webhook.url: {exc}", field="webhook.url") from None
        webhook = {"url": body.webhook.url, "events": sorted(set(body.webhook.events))}
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
    job.webhook = webhook
    job.stages[0].queued_at = job_queries.now()
    return job


def enqueue_committed(session: Session, job: Job) -> None:
    """Send a committed job's remaining stages to the broker and record that it got there.

    If the broker is down the job stays committed and undispatched; the sweeper sends it later.
    """
    first = job_queries.first_unfinished_stage(job)
    stages = [s.name for s in job.stages[first.position :]] if first is not None else []
    if enqueue_cascade(job.id, stages, preset=job.preset, seq=job.dispatch_seq, priority=job.priority):
        job_queries.mark_dispatched(session, job_id=job.id, seq=job.dispatch_seq)
        session.commit()


MAX_WAIT_S = 60


def parse_prefer_wait(prefer: str | None) -> float:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), 0 when absent; more than 60 is a 422."""
    if not prefer:
        return 0.0
    for token in prefer.split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            raise InvalidInput(f"Prefer: wait must be a number of seconds, got {value!r}", field="Prefer") from None
        if not 0 <= seconds <= MAX_WAIT_S:
            raise InvalidInput(f"Prefer: wait must be between 0 and {MAX_WAIT_S} seconds, got {value}", field="Prefer")
        return seconds
    return 0.0


def request_fingerprint(body: JobCreate) -> str:
    """A hash of the request as parsed, so formatting and key order do not matter."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotent_replay(session: Session, *, key: ApiKey, idempotency_key: str, fingerprint: str) -> Job | None:
    """The job an earlier request with this key created; a Conflict if that request was another one."""
    row = session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.tenant_id == key.tenant_id, IdempotencyKey.key == idempotency_key)
    )
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise Conflict(
            "this Idempotency-Key was used with a different request body; use a new key for a new request",
            field="Idempotency-Key",
        )
    return job_queries.get_job(session, job_id=row.job_id, tenant_id=key.tenant_id)


def remember_idempotency_key(
    session: Session, *, key: ApiKey, idempotency_key: str, fingerprint: str, job: Job
) -> bool:
    """Record the key with the new job; False when a concurrent request with the same key won the race."""
    session.add(IdempotencyKey(tenant_id=key.tenant_id, key=idempotency_key, request_hash=fingerprint, job_id=job.id))
    try:
        # The unique index makes a concurrent insert of the same key wait here for the other transaction.
        session.flush()
    except IntegrityError:
        session.rollback()
        return False
    return True


def wait_for_job(session: Session, job: Job, timeout_s: float) -> Job:
    """Hold until the job ends or ``timeout_s`` passes, following its event stream; the job as it is then."""
    from workers.events import stream_key

    deadline = time.monotonic() + timeout_s
    last_id = "0-0"
    redis_client = get_redis()
    while (remaining := deadline - time.monotonic()) > 0:
        replies: Any
        try:
            replies = redis_client.xread({stream_key(job.id): last_id}, block=max(1, int(remaining * 1000)), count=50)
        except RedisError:
            time.sleep(min(0.2, remaining))  # no live stream: the row below still tells
            replies = []
        for _stream, entries in replies:
            for entry_id, fields in entries:
                last_id = entry_id
                if fields.get(b"event") == b"done":
                    return _reloaded(session, job)
        if not replies and JobStatus(_reloaded(session, job).status).is_terminal:
            break
    return _reloaded(session, job)


def _reloaded(session: Session, job: Job) -> Job:
    session.rollback()  # a fresh snapshot: the worker committed in another transaction
    fresh = job_queries.get_job(session, job_id=job.id)
    assert fresh is not None
    return fresh
