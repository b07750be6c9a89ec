"""The webhook outbox: events to deliver, their delivery state and attempt log. The caller owns the transaction.

An event is ``pending`` until a 2xx answer makes it ``delivered``, or until its retry schedule runs out
(or its URL can never work) and it ends ``failed``. ``WebhookEvent.attempts`` counts the attempts of the
current schedule; ``WebhookEvent.attempt_log`` keeps every attempt ever made.

A deliverer holds an event by a lease, not a lock: ``lease_event`` stamps a random token and an expiry on
the row in a short transaction, the HTTP call runs with no transaction open, and ``leased_event`` finds
the row again for the outcome only while the token still matches. A deliverer that dies leaves a lease
that expires; the sweeper then sends the event again.
"""

import enum
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
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


def record_event(
    session: Session,
    *,
    job: Job,
    type: str,
    payload: dict[str, Any],
    image_keys: Sequence[tuple[list[str | int], str]] = (),
) -> WebhookEvent | None:
    """Put an event of ``job`` in the outbox, due now, if its webhook asks for it; else None.

    ``image_keys`` name the places in ``payload`` where each attempt puts a freshly signed image URL
    (see ``core.webhook_payload``). The event takes the job's next sequence number, which the payload
    carries as ``sequence``. Call it in the transaction that changes the job, and enqueue its delivery
    after the commit.
    """
    if not job.webhook or not wants_event(job.webhook, type):
        return None
    # One statement, which takes the job row's lock: concurrent recorders get distinct, gapless numbers in
    # the order they commit, whether or not the caller locked the job.
    sequence = session.execute(
        update(Job).where(Job.id == job.id).values(webhook_seq=Job.webhook_seq + 1).returning(Job.webhook_seq)
    ).scalar_one()
    t = now()
    # created_at from Python, not the transaction's now(): events of one transaction keep their order.
    event = WebhookEvent(
        job_id=job.id,
        tenant_id=job.tenant_id,
        type=type,
        sequence=sequence,
        url=job.webhook["url"],
        payload={**payload, "sequence": sequence},
        image_keys=[[path, key] for path, key in image_keys],
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=t,
        created_at=t,
    )
    session.add(event)
    session.flush()
    return event


def lease_event(session: Session, *, event_id: uuid.UUID, lease_s: float, early_s: float) -> WebhookEvent | None:
    """Lease the event for one attempt, for ``lease_s`` seconds; None unless it is pending, due (or due within
    ``early_s``) and held by no live lease. The caller commits at once: the lease, not a lock, is the claim."""
    t = now()
    query = (
        select(WebhookEvent)
        .where(
            WebhookEvent.id == event_id,
            WebhookEvent.status == DeliveryStatus.PENDING,
            WebhookEvent.next_attempt_at <= t + timedelta(seconds=early_s),
            or_(WebhookEvent.lease_expires_at.is_(None), WebhookEvent.lease_expires_at <= t),
        )
        # Waits out another transaction on the row (all are short) and then sees its lease.
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    event = session.scalar(query)
    if event is not None:
        event.lease_token = uuid.uuid4()
        event.lease_expires_at = t + timedelta(seconds=lease_s)
    return event


def leased_event(session: Session, *, event_id: uuid.UUID, lease_token: uuid.UUID) -> WebhookEvent | None:
    """The event, locked, if the lease ``lease_token`` still holds it; None if the lease expired and another
    deliverer took it, or a redelivery reset it: the outcome of that attempt no longer decides anything."""
    query = (
        select(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.lease_token == lease_token)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.scalar(query)


def is_leased(event: WebhookEvent) -> bool:
    """Whether a deliverer holds the event right now (an attempt is in flight)."""
    return event.lease_expires_at is not None and event.lease_expires_at > now()


def release_lease(event: WebhookEvent) -> None:
    """The attempt is recorded: the event is free for the next one."""
    event.lease_token = None
    event.lease_expires_at = None


def log_attempt(
    session: Session,
    *,
    event_id: uuid.UUID,
    status_code: int | None,
    latency_ms: int,
    error: str | None,
    attempted_at: datetime | None = None,
) -> WebhookAttempt:
    """Add one HTTP attempt to an event's log without counting it (an attempt whose lease was lost)."""
    attempt = WebhookAttempt(
        event_id=event_id,
        attempted_at=attempted_at or now(),
        status_code=status_code,
        latency_ms=latency_ms,
        error=error,
    )
    session.add(attempt)
    session.flush()
    return attempt


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
    attempt = log_attempt(
        session,
        event_id=event.id,
        status_code=status_code,
        latency_ms=latency_ms,
        error=error,
        attempted_at=attempted_at,
    )
    event.attempts += 1
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
    """Pending events due before ``before``, or whose deliverer's lease ran out, oldest first.

    The sweeper passes a time a little in the past, so that only events whose delivery message was lost
    (not merely on its way) are enqueued again. An expired lease needs no such grace: its deliverer died,
    or overran its deadline and will find its outcome dropped.
    """
    query = (
        select(WebhookEvent.id)
        .where(
            WebhookEvent.status == DeliveryStatus.PENDING,
            or_(
                WebhookEvent.lease_expires_at.is_(None) & (WebhookEvent.next_attempt_at < before),
                WebhookEvent.lease_expires_at <= now(),
            ),
        )
        .order_by(WebhookEvent.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def list_deliveries(session: Session, *, job_id: uuid.UUID) -> list[WebhookEvent]:
    """A job's webhook events, newest (highest sequence) first, each with its attempt log loaded."""
    query = (
        select(WebhookEvent)
        .where(WebhookEvent.job_id == job_id)
        .order_by(WebhookEvent.sequence.desc())
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
        # Waits only for a lease being taken or an outcome being recorded: no transaction spans an HTTP call.
        query = query.with_for_update()
    return session.scalar(query.execution_options(populate_existing=True))


def reset_for_redelivery(event: WebhookEvent) -> None:
    """Deliver the event again, due now, on a fresh retry schedule; its attempt log is kept.

    Any lease ends: the outcome of an attempt still in flight is logged but no longer settles the event.
    """
    release_lease(event)
    event.status = DeliveryStatus.PENDING
    event.attempts = 0
    event.next_attempt_at = now()
    event.delivered_at = None
