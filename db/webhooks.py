"""The webhook outbox: events to deliver, their delivery state and attempt log. The caller owns the transaction.

An event is ``pending`` until a 2xx answer makes it ``delivered``, or until its retry schedule runs out
(or its URL can never work) and it ends ``failed``. ``WebhookEvent.attempts`` counts the attempts of the
current schedule; ``WebhookEvent.attempt_log`` keeps every attempt ever made.
"""

import enum
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from db.models import Job, WebhookAttempt, WebhookEvent

# The client's names for event groups (``webhook.events`` of a job) -> the event types they cover.
EVENT_FILTERS: dict[str, set[str]] = {
    "started": {"job.started"},
    "stage": {"job.stage"},
    "completed": {"job.succeeded", "job.failed", "job.canceled"},
}


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def now() -> datetime:
    return datetime.now(UTC)


def wants_event(webhook: dict[str, Any], type: str) -> bool:
    """Whether a job's webhook settings ask for events of ``type`` (no or empty ``events``: all of them)."""
    groups = webhook.get("events") or []
    return not groups or any(type in EVENT_FILTERS.get(group, ()) for group in groups)


def record_event(session: Session, *, job: Job, type: str, payload: dict[str, Any]) -> WebhookEvent | None:
    """Put an event of ``job`` in the outbox, due now, if its webhook asks for it; else None.

    Call it in the transaction that changes the job, and enqueue its delivery after the commit.
    """
    if not job.webhook or not wants_event(job.webhook, type):
        return None
    t = now()
    # created_at from Python, not the transaction's now(): events of one transaction keep their order.
    event = WebhookEvent(
        job_id=job.id,
        tenant_id=job.tenant_id,
        type=type,
        url=job.webhook["url"],
        payload=payload,
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=t,
        created_at=t,
    )
    session.add(event)
    session.flush()
    return event


def claim_event_for_delivery(session: Session, *, event_id: uuid.UUID) -> WebhookEvent | None:
    """The pending event, locked until the transaction ends; None if it is settled or another deliverer has it."""
    query = (
        select(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.status == DeliveryStatus.PENDING)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return session.scalar(query)


def record_attempt(
    session: Session,
    *,
    event: WebhookEvent,
    status_code: int | None,
    latency_ms: int,
    error: str | None,
    attempted_at: datetime | None = None,
) -> WebhookAttempt:
    """Log one HTTP attempt at delivering ``event`` and count it."""
    attempt = WebhookAttempt(
        event_id=event.id,
        attempted_at=attempted_at or now(),
        status_code=status_code,
        latency_ms=latency_ms,
        error=error,
    )
    session.add(attempt)
    event.attempts += 1
    session.flush()
    return attempt


def mark_delivered(event: WebhookEvent) -> None:
    """The receiver answered 2xx: the event is done."""
    event.status = DeliveryStatus.DELIVERED
    event.delivered_at = now()


def mark_failed(event: WebhookEvent) -> None:
    """No more attempts: the schedule ran out, or the URL can never be delivered to."""
    event.status = DeliveryStatus.FAILED


def schedule_retry(event: WebhookEvent, *, delay_s: float) -> None:
    """Try again in ``delay_s`` seconds."""
    event.next_attempt_at = now() + timedelta(seconds=delay_s)


def due_events(session: Session, *, before: datetime, limit: int) -> list[uuid.UUID]:
    """Pending events due before ``before``, oldest first, skipping those a deliverer holds right now.

    The sweeper passes a time a little in the past, so that only events whose delivery message was lost
    (not merely on its way) are enqueued again.
    """
    query = (
        select(WebhookEvent.id)
        .where(WebhookEvent.status == DeliveryStatus.PENDING, WebhookEvent.next_attempt_at < before)
        .order_by(WebhookEvent.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def list_deliveries(session: Session, *, job_id: uuid.UUID) -> list[WebhookEvent]:
    """A job's webhook events, newest first, each with its attempt log loaded."""
    query = (
        select(WebhookEvent)
        .where(WebhookEvent.job_id == job_id)
        .order_by(WebhookEvent.created_at.desc())
        .options(selectinload(WebhookEvent.attempt_log))
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(query))


def get_event(
    session: Session, *, event_id: uuid.UUID, tenant_id: uuid.UUID | None = None, for_update: bool = False
) -> WebhookEvent | None:
    """The event, or None; with ``tenant_id``, another tenant's event is None too."""
    query = select(WebhookEvent).where(WebhookEvent.id == event_id)
    if tenant_id is not None:
        query = query.where(WebhookEvent.tenant_id == tenant_id)
    if for_update:
        # Waits for a delivery in flight, so a reset is not overwritten by its outcome.
        query = query.with_for_update()
    return session.scalar(query.execution_options(populate_existing=True))


def reset_for_redelivery(event: WebhookEvent) -> None:
    """Deliver the event again, due now, on a fresh retry schedule; its attempt log is kept."""
    event.status = DeliveryStatus.PENDING
    event.attempts = 0
    event.next_attempt_at = now()
    event.delivered_at = None
