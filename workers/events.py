"""Job events: the webhook outbox (written in the state change's transaction) and the live stream.

A state change records its events on a ``JobEvents`` while its transaction is open; after the commit,
``publish`` appends them to the job's Redis stream (what ``GET /v1/jobs/{id}/events`` reads) and
enqueues the webhook deliveries. If Redis is down at that moment nothing is lost: the outbox rows are
in Postgres (the sweeper enqueues them), and the event stream falls back to the job's row.
"""

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from core.config import get_settings
from core.redis_client import get_redis
from db.models import Job, JobStage, JobStatus
from db.session import session_scope
from storage.factory import process_store

log = logging.getLogger(__name__)

STREAM_TTL_S = 86_400
STREAM_MAXLEN = 2_000


def stream_key(job_id: object) -> str:
    """The Redis stream of one job's live events."""
    return f"imagen:events:{job_id}"


def job_json(job: Job) -> dict[str, Any]:
    """The job as clients see it (the API's ``JobPublic``), as JSON."""
    from api.schemas import JobPublic

    return JobPublic.from_row(job, process_store(), get_settings().presign_ttl_s).model_dump(mode="json")


def append_live(job_id: uuid.UUID, event: str, data: dict[str, Any]) -> None:
    """Append one event to the job's stream; a Redis failure only costs live viewers an update."""
    try:
        redis_client = get_redis()
        key = stream_key(job_id)
        redis_client.xadd(key, {"event": event, "data": json.dumps(data)}, maxlen=STREAM_MAXLEN, approximate=True)
        redis_client.expire(key, STREAM_TTL_S)
    except RedisError as exc:
        log.warning("could not publish %s of job %s: %s", event, job_id, exc)


class JobEvents:
    """Events of state changes made in one transaction, published once it committed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._live: list[tuple[uuid.UUID, str, dict[str, Any]]] = []
        self._deliveries: list[uuid.UUID] = []

    def _webhook(self, job: Job, type: str, **extra: Any) -> None:
        if not job.webhook:
            return
        from db.webhooks import record_event

        self.session.flush()
        payload = {"type": type, **extra, "data": job_json(job)}
        event = record_event(self.session, job=job, type=type, payload=payload)
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

    def finished(self, job: Job) -> None:
        status = JobStatus(job.status)
        self._live.append((job.id, "status", {"status": str(status), "error": job.error}))
        self._live.append((job.id, "done", {"status": str(status)}))
        self._webhook(job, f"job.{status}")

    def publish(self) -> None:
        """After the commit: the live stream, then the webhook deliveries."""
        for job_id, event, data in self._live:
            append_live(job_id, event, data)
        if self._deliveries:
            from workers.webhooks import enqueue_delivery

            for event_id in self._deliveries:
                enqueue_delivery(event_id)


@contextmanager
def job_transaction() -> Iterator[tuple[Session, JobEvents]]:
    """A transaction whose job events are published after it commits (and dropped if it rolls back)."""
    with session_scope() as session:
        events = JobEvents(session)
        yield session, events
    events.publish()
