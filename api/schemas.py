"""Request and response schemas, separate from the ORM rows. Validation lives here."""

import json
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from db.models import Job, JobStage, JobStatus, StageStatus
from storage.object_store import ObjectStore

MAX_PROMPT_CHARS = 2000
MAX_METADATA_BYTES = 16_384


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseStageParams(_Strict):
    """Sampling parameters of the base (64 px) stage; omitted ones take the preset's defaults."""

    steps: int | None = Field(default=None, ge=1, le=1000, description="denoising steps, 1..1000")
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=50.0, description="classifier-free guidance scale, 0..50 (1 = no guidance)"
    )


class SuperResolutionParams(BaseStageParams):
    """Sampling parameters of a super-resolution stage."""

    noise_level: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="noise-conditioning augmentation of the low-resolution input (the preset caps it)",
    )


class StageOverrides(_Strict):
    base: BaseStageParams | None = None
    sr256: SuperResolutionParams | None = None
    sr1024: SuperResolutionParams | None = None


class GenerateInput(_Strict):
    """What to draw, and how."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    num_images: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="fixes the output; random if omitted")
    resolution: int = Field(default=1024, description="the cascade stops after the stage that produces it")
    stages: StageOverrides = Field(default_factory=StageOverrides)
    caption: bool = False
    index: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain some text, not only whitespace")
        return value


class JobCreate(_Strict):
    """The body of ``POST /v1/jobs``."""

    kind: Literal["generate"]
    input: GenerateInput
    priority: int = Field(default=5, ge=0, le=9, description="0..9; 9 runs first")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed")
        return value


class OutputFile(BaseModel):
    index: int
    url: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None


class StagePublic(BaseModel):
    name: str
    status: StageStatus
    progress: float
    attempts: int
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: str | None
    outputs: list[OutputFile]


class ImagePublic(BaseModel):
    url: str
    width: int | None
    height: int | None
    seed: int | None


class JobOutput(BaseModel):
    images: list[ImagePublic]


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: uuid.UUID
    kind: str
    status: JobStatus
    preset: str
    input: dict[str, Any]
    priority: int
    metadata: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stages: list[StagePublic]
    output: JobOutput | None

    @classmethod
    def from_row(cls, job: Job, store: ObjectStore, ttl_s: int) -> "JobPublic":
        """The public view of a job row, with fresh presigned URLs for its images."""
        stages = [_stage_public(stage, store, ttl_s) for stage in job.stages]
        output = None
        if job.status == JobStatus.SUCCEEDED and stages:
            last = stages[-1]
            output = JobOutput(
                images=[ImagePublic(url=o.url, width=o.width, height=o.height, seed=o.seed) for o in last.outputs]
            )
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            preset=job.preset,
            input=job.input,
            priority=job.priority,
            metadata=job.meta,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            stages=stages,
            output=output,
        )


def _stage_public(stage: JobStage, store: ObjectStore, ttl_s: int) -> StagePublic:
    outputs = [
        OutputFile(
            index=o["index"],
            url=store.presigned_url(o["key"], ttl_s),
            width=o.get("width"),
            height=o.get("height"),
            seed=o.get("seed"),
        )
        for o in stage.outputs
    ]
    return StagePublic(
        name=stage.name,
        status=stage.status,
        progress=stage.progress,
        attempts=stage.attempts,
        queued_at=stage.queued_at,
        started_at=stage.started_at,
        finished_at=stage.finished_at,
        duration_ms=stage.duration_ms,
        error=stage.error,
        outputs=outputs,
    )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None
