"""Job events: the webhook outbox, written in the state change's transaction, and the live stream.

A state change records its events on a ``JobEvents`` while its transaction is open; after the commit,
``publish`` appends them to the job's Redis stream (what ``GET /v1/jobs/{id}/events`` reads), counts
them for the metrics, and hands each webhook delivery to ``deliver`` (the dispatcher's
``enqueue_delivery``). If Redis is down at that moment nothing is lost: the outbox rows are in Postgres
(the sweeper enqueues them), the event stream falls back to the job's row, and only the metrics miss
the events.
"""

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from core.live_events import append_live
from core.metric_counts import StageObservation, count_events
from core.statuses import JobStatus
from core.webhook_payload import job_snapshot
from db.models import Job, JobStage
from db.webhooks import record_event


class JobEvents:
    """Events of state changes made in one transaction, published once it committed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._live: list[tuple[uuid.UUID, str, dict[str, Any]]] = []
        self._deliveries: list[uuid.UUID] = []
        self._finished: list[tuple[str, str]] = []
        self._stages: list[StageObservation] = []

    def _webhook(self, job: Job, type: str, **extra: Any) -> None:
        if not job.webhook:
            return
        self.session.flush()
        # Image URLs are signed at each delivery attempt, not now: retries outlive a URL's expiry.
        snapshot, image_keys = job_snapshot(job)
        event = record_event(
            self.session,
            job=job,
            type=type,
            payload={"type": type, **extra, "data": snapshot},
            image_keys=[(["data", *path], key) for path, key in image_keys],
        )
        if event is not None:
            self._deliveries.append(event.id)

    def started(self, job: Job) -> None:
        self._live.append((job.id, "status", {"status": str(job.status)}))
        self._webhook(job, "job.started")

    def stage_running(self, job: Job, stage: JobStage) -> None:
        self._live.append(
            (job.id, "stage", {"name": stage.name, "status": str(stage.status), "attempts": stage.attempts})
        )

    def stage_done(self, job: Job, stage: JobStage) -> None:
        self._live.append(
            (job.id, "stage", {"name": stage.name, "status": str(stage.status), "duration_ms": stage.duration_ms})
        )
        self._webhook(job, "job.stage", stage=stage.name)
        waited = None
        if stage.queued_at is not None and stage.started_at is not None:
            waited = (stage.started_at - stage.queued_at).total_seconds()
        self._stages.append(StageObservation(stage.name, job.preset, (stage.duration_ms or 0) / 1000, waited))

    def finished(self, job: Job) -> None:
        status = JobStatus(job.status)
        self._live.append((job.id, "status", {"status": str(status), "error": job.error}))
        self._live.append((job.id, "done", {"status": str(status)}))
        self._webhook(job, f"job.{status}")
        self._finished.append((job.kind, str(status)))

    def publish(self, deliver: Callable[[uuid.UUID], object]) -> None:
        """After the commit: the live stream, the metrics, then the webhook deliveries."""
        for job_id, event, data in self._live:
            append_live(job_id, event, data)
        count_events(finished=self._finished, stages=self._stages)
        for event_id in self._deliveries:
            deliver(event_id)
