"""Webhooks: a job's delivery log, manual redelivery, and the tenant's signing secret."""

from fastapi import APIRouter

from api.deps import CurrentJob, CurrentKey, SessionDep
from api.job_control import redeliver_event
from api.openapi import error_responses
from api.schemas import DeliveryAttempt, DeliveryList, WebhookDelivery, WebhookSecret
from db import webhooks as webhook_queries
from db.models import Tenant, WebhookEvent

router = APIRouter(prefix="/v1", tags=["webhooks"])


def _delivery(event: WebhookEvent) -> WebhookDelivery:
    return WebhookDelivery(
        id=event.id,
        webhook_id=f"msg_{event.id.hex}",
        type=event.type,
        sequence=event.sequence,
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
def list_deliveries(job: CurrentJob, session: SessionDep) -> DeliveryList:
    """Every webhook event of the job, newest first, with each delivery attempt (time, status, latency, error)."""
    return DeliveryList(items=[_delivery(e) for e in webhook_queries.list_deliveries(session, job_id=job.id)])


@router.post(
    "/jobs/{job_id}/deliveries/{delivery_id}/redeliver",
    response_model=WebhookDelivery,
    responses=error_responses(409, s409="an attempt at delivering this event is in flight right now"),
)
def redeliver_webhook(job: CurrentJob, delivery_id: str, session: SessionDep) -> WebhookDelivery:
    """Deliver an event again, on a fresh retry schedule (its attempt log is kept)."""
    event = redeliver_event(session, job, delivery_id)
    return _delivery(event)


@router.get("/webhooks/secret", response_model=WebhookSecret)
def read_webhook_secret(key: CurrentKey, session: SessionDep) -> WebhookSecret:
    """The tenant's ``whsec_...`` secret: verify deliveries with any Standard Webhooks library."""
    tenant = session.get(Tenant, key.tenant_id)
    assert tenant is not None
    return WebhookSecret(secret=tenant.webhook_secret)
