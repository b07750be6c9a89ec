"""A job as clients see it: the projection of its row that the API returns and every webhook carries.

Images are shown as fresh presigned URLs; the result of a succeeded job is read from the stage its
preset names as final for the job's resolution.
"""

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from core.job_input import GenerateSpec
from core.presets import get_preset
from core.statuses import JobStatus, StageStatus

if TYPE_CHECKING:
    from db.models import Job, JobStage


class UrlSigner(Protocol):
    """What the view needs of the object store: a presigned GET URL for a key."""

    def presigned_url(self, key: str, ttl_s: int) -> str: ...


class OutputFile(BaseModel):
    index: int
    url: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    caption: str | None = None
    embedding_id: uuid.UUID | None = None


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
    caption: str | None = None


class JobOutput(BaseModel):
    """What a finished job produced: images (generate), a caption (caption) or an index entry (index)."""

    images: list[ImagePublic] | None = None
    caption: str | None = None
    embedding_id: uuid.UUID | None = None


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
    # When the job was deleted (by DELETE /v1/jobs/{id}, or by the output retention): its row stays, its
    # images, embeddings and index entries are gone.
    deleted_at: datetime | None = None

    @classmethod
    def from_row(cls, job: "Job", store: UrlSigner, ttl_s: int) -> "JobPublic":
        """The public view of a job row, with fresh presigned URLs for its images."""
        stages = [_stage_public(stage, store, ttl_s, deleted=job.deleted_at is not None) for stage in job.stages]
        output = _output(job, stages) if job.status == JobStatus.SUCCEEDED and job.deleted_at is None else None
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
            deleted_at=job.deleted_at,
        )


def _output(job: "Job", stages: list[StagePublic]) -> JobOutput:
    by_name = {stage.name: stage for stage in stages}
    if job.kind == "caption":
        return JobOutput(caption=by_name["caption"].outputs[0].caption)
    if job.kind == "index":
        return JobOutput(embedding_id=by_name["embed"].outputs[0].embedding_id)
    captions = {o.index: o.caption for o in by_name["caption"].outputs} if "caption" in by_name else {}
    final = GenerateSpec.model_validate(job.input).final_stage(get_preset(job.preset))
    return JobOutput(
        images=[
            ImagePublic(url=o.url or "", width=o.width, height=o.height, seed=o.seed, caption=captions.get(o.index))
            for o in by_name[final.name].outputs
        ]
    )


def _stage_public(stage: "JobStage", store: UrlSigner, ttl_s: int, *, deleted: bool) -> StagePublic:
    outputs = (
        []
        if deleted
        else [
            OutputFile(
                index=o["index"],
                url=store.presigned_url(o["key"], ttl_s) if "key" in o else None,
                width=o.get("width"),
                height=o.get("height"),
                seed=o.get("seed"),
                caption=o.get("caption"),
                embedding_id=o.get("embedding_id"),
            )
            for o in stage.outputs
        ]
    )
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
