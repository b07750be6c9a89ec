"""The gauges a Prometheus scrape reads from Postgres: what is live now, through partial indexes, so a
scrape costs what is in flight, not what ever ran. The caller owns the transaction.

Counters and histograms (jobs submitted and finished, stage times, webhook attempts) are counted as the
events happen: see ``core.metric_counts``.
"""

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from db.models import Job, JobStatus, WebhookEvent
from db.webhooks import DeliveryStatus

LIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


def begin_scrape(session: Session, *, timeout_ms: int) -> None:
    """Make the session's transaction read-only, and drop any statement in it that runs past ``timeout_ms``."""
    session.execute(text("SET TRANSACTION READ ONLY"))
    session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))


def live_job_counts(session: Session) -> dict[tuple[str, str], int]:
    """Queued and running jobs by (kind, status), through the index of live jobs."""
    query = (
        select(Job.kind, Job.status, func.count()).where(Job.status.in_(LIVE_STATUSES)).group_by(Job.kind, Job.status)
    )
    return {(kind, str(status)): count for kind, status, count in session.execute(query)}


def pending_webhook_events(session: Session) -> int:
    """Outbox events not yet delivered (nor given up on), through the index of due events."""
    query = select(func.count()).select_from(WebhookEvent).where(WebhookEvent.status == DeliveryStatus.PENDING)
    return int(session.scalar(query) or 0)
