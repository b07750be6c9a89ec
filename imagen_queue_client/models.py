"""What the API returns, as typed objects. Each keeps the JSON it was read from in ``raw``; fields the
server adds later are kept there and ignored here."""

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


@dataclass(frozen=True)
class StageOutput:
    """One file a stage wrote: an image (with url, size and seed), the prompt embeddings, a caption."""

    index: int
    url: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    caption: str | None = None
    embedding_id: uuid.UUID | None = None

    @property
    def is_image(self) -> bool:
        return self.url is not None and self.width is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageOutput":
        return cls(
            index=int(data["index"]),
            url=data.get("url"),
            width=data.get("width"),
            height=data.get("height"),
            seed=data.get("seed"),
            caption=data.get("caption"),
            embedding_id=_uuid(data.get("embedding_id")),
        )


@dataclass(frozen=True)
class Stage:
    """One stage of a job (``text``, ``base_64``, ``sr_256``, ..., ``caption``, ``embed``)."""

    name: str
    status: str
    progress: float
    attempts: int
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: str | None
    outputs: list[StageOutput]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stage":
        return cls(
            name=data["name"],
            status=data["status"],
            progress=float(data.get("progress") or 0.0),
            attempts=int(data.get("attempts") or 0),
            queued_at=_when(data.get("queued_at")),
            started_at=_when(data.get("started_at")),
            finished_at=_when(data.get("finished_at")),
            duration_ms=data.get("duration_ms"),
            error=data.get("error"),
            outputs=[StageOutput.from_dict(o) for o in data.get("outputs") or []],
        )


@dataclass(frozen=True)
class Image:
    """A final image of a generate job: a presigned URL (time-limited), its size, seed and caption."""

    url: str
    width: int | None
    height: int | None
    seed: int | None
    caption: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Image":
        return cls(
            url=data["url"],
            width=data.get("width"),
            height=data.get("height"),
            seed=data.get("seed"),
            caption=data.get("caption"),
        )


@dataclass(frozen=True)
class JobOutput:
    """What a succeeded job produced: images (generate), a caption (caption) or an index entry (index)."""

    images: list[Image] | None = None
    caption: str | None = None
    embedding_id: uuid.UUID | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobOutput":
        images = data.get("images")
        return cls(
            images=[Image.from_dict(i) for i in images] if images is not None else None,
            caption=data.get("caption"),
            embedding_id=_uuid(data.get("embedding_id")),
        )


@dataclass(frozen=True)
class Job:
    """A job as the API shows it."""

    id: str
    kind: str
    status: str
    preset: str | None
    input: dict[str, Any]
    priority: int
    metadata: dict[str, Any]
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    stages: list[Stage]
    output: JobOutput | None
    deleted_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job ended (succeeded, failed or canceled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def images(self) -> list[Image]:
        """The final images (empty unless a generate job succeeded)."""
        return list(self.output.images or []) if self.output else []

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; KeyError if the job has none."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        output = data.get("output")
        return cls(
            id=str(data["id"]),
            kind=data["kind"],
            status=data["status"],
            preset=data.get("preset"),
            input=data.get("input") or {},
            priority=int(data.get("priority") or 0),
            metadata=data.get("metadata") or {},
            error=data.get("error"),
            created_at=_when(data.get("created_at")),
            started_at=_when(data.get("started_at")),
            finished_at=_when(data.get("finished_at")),
            stages=[Stage.from_dict(s) for s in data.get("stages") or []],
            output=JobOutput.from_dict(output) if isinstance(output, dict) else None,
            deleted_at=_when(data.get("deleted_at")),
            raw=data,
        )


@dataclass(frozen=True)
class JobPage:
    """One page of ``GET /v1/jobs``: the jobs, newest first, and the cursor of the next page (None at the end)."""

    items: list[Job]
    next_cursor: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobPage":
        return cls(items=[Job.from_dict(j) for j in data.get("items") or []], next_cursor=data.get("next_cursor"))


@dataclass(frozen=True)
class SearchResult:
    """One hit of ``POST /v1/search``: its score (higher is nearer), the image and what it was indexed with."""

    score: float
    image_url: str
    job_id: str
    caption: str | None
    text: str | None
    metadata: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchResult":
        return cls(
            score=float(data["score"]),
            image_url=data["image_url"],
            job_id=str(data["job_id"]),
            caption=data.get("caption"),
            text=data.get("text"),
            metadata=data.get("metadata") or {},
            raw=data,
        )


@dataclass(frozen=True)
class DeliveryAttempt:
    """One attempt at delivering a webhook event: when, the receiver's status (None: no answer), the error."""

    attempted_at: datetime | None
    status_code: int | None
    latency_ms: int
    error: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeliveryAttempt":
        return cls(
            attempted_at=_when(data.get("attempted_at")),
            status_code=data.get("status_code"),
            latency_ms=int(data.get("latency_ms") or 0),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class Delivery:
    """One webhook event of a job and every attempt at delivering it."""

    id: str
    webhook_id: str
    type: str
    sequence: int
    url: str
    status: str
    attempts: list[DeliveryAttempt]
    created_at: datetime | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Delivery":
        return cls(
            id=str(data["id"]),
            webhook_id=data["webhook_id"],
            type=data["type"],
            sequence=int(data.get("sequence") or 0),
            url=data["url"],
            status=data["status"],
            attempts=[DeliveryAttempt.from_dict(a) for a in data.get("attempts") or []],
            created_at=_when(data.get("created_at")),
            delivered_at=_when(data.get("delivered_at")),
            next_attempt_at=_when(data.get("next_attempt_at")),
            raw=data,
        )


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: ``status``, ``stage``, ``progress`` or the final ``done``.

    ``id`` is where the stream stood (pass it as ``last_event_id`` to resume after it); the frames a
    server makes up from the job's row, when its live stream is gone, carry none.
    """

    event: str
    data: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook delivery: its type (``job.succeeded``, ...), the job as it was, and its place."""

    id: str
    type: str
    timestamp: datetime
    job: Job
    sequence: int | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
