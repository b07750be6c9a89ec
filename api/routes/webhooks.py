"""Webhooks: a job's delivery log, manual redelivery, and the tenant's signing secret."""

import uuid

from fastapi import APIRouter

from api.deps import CurrentKey, SessionDep
from api.routes.jobs import job_or_404
from api.schemas import DeliveryAttempt, DeliveryList, WebhookDelivery, WebhookSecret
from core.errors import Conflict, NotFound
from db import webhooks as webhook_queries
from db.models import Tenant, WebhookEvent

router = APIRouter(prefix="/v1", tags=["webhooks"])


def _delivery(event: WebhookEvent) -> WebhookDelivery:
    return WebhookDelivery(
        id=event.id,
        webhook_id=f"msg_{event.id.hex}",
        type=event.type,
        url=event.url,
        status=event.status,
        attempts=[
            DeliveryAttempt(
                attempted_at=a.attempted_at, status_code=a.status_code, latency_ms=a.latency_ms, error=a.error
            )
            for a in event.attempt_log
        ],
        created_at=event.created_at,
        delivered_at=event.delivered_at,
        next_attempt_at=event.next_attempt_at if event.status == "pending" else None,
    )


@router.get("/jobs/{job_id}/deliveries", response_model=DeliveryList)
def list_deliveries(job_id: str, key: CurrentKey, session: SessionDep) -> DeliveryList:
    """Every webhook event of the job, newest first, with each delivery attempt (time, status, latency, error)."""
    job = job_or_404(session, job_id, key)
    return DeliveryList(items=[_delivery(e) for e in webhook_queries.list_deliveries(session, job_id=job.id)])


@router.post("/jobs/{job_id}/deliveries/{delivery_id}/redeliver", response_model=WebhookDelivery)
def redeliver_webhook(job_id: str, delivery_id: str, key: CurrentKey, session: SessionDep) -> WebhookDelivery:
    """Deliver an event again, on a fresh retry schedule (its attempt log is kept)."""
    from workers.webhooks import enqueue_delivery

    job = job_or_404(session, job_id, key)
    try:
        event_id = uuid.UUID(delivery_id)
    except ValueError:
        raise NotFound(f"no delivery {delivery_id!r} for job {job_id}", field="delivery_id") from None
    event = session.get(WebhookEvent, event_id)
    if event is None or event.job_id != job.id:
        raise NotFound(f"no delivery {delivery_id!r} for job {job_id}", field="delivery_id")
    # A deliverer holds the row during its HTTP call: do not queue behind it.
    if session.get(WebhookEvent, event_id, with_for_update={"skip_locked": True}, populate_existing=True) is None:
        raise Conflict("this event is being delivered right now; try again in a few seconds", field="delivery_id")
    webhook_queries.reset_for_redelivery(event)
    session.commit()
    enqueue_delivery(event.id)
    return _delivery(event)


@router.get("/webhooks/secret", response_model=WebhookSecret)
def read_webhook_secret(key: CurrentKey, session: SessionDep) -> WebhookSecret:
    """The tenant's ``whsec_...`` secret: verify deliveries with any Standard Webhooks library."""
    tenant = session.get(Tenant, key.tenant_id)
    assert tenant is not None
    return WebhookSecret(secret=tenant.webhook_secret)
