"""Aggregates for the admin dashboard's overview, each one grouped query. The caller owns the transaction."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, JobStage, StageStatus, WebhookEvent
from db.webhooks import DeliveryStatus


@dataclass(frozen=True)
class StagePercentiles:
    """Run time of one stage's succeeded runs, in milliseconds."""

    stage: str
    count: int
    p50_ms: float
    p95_ms: float


def job_counts_since(session: Session, *, since: datetime) -> dict[tuple[str, str], int]:
    """Jobs created at or after ``since``, by (kind, status)."""
    rows = session.execute(
        select(Job.kind, Job.status, func.count()).where(Job.created_at >= since).group_by(Job.kind, Job.status)
    )
    return {(kind, str(status)): count for kind, status, count in rows}


def finished_per_minute(session: Session, *, since: datetime) -> dict[datetime, int]:
    """Jobs that ended at or after ``since``, by the minute they ended in (minutes without any are absent)."""
    minute = func.date_trunc("minute", Job.finished_at)
    rows = session.execute(
        select(minute, func.count()).where(Job.finished_at >= since).group_by(minute).order_by(minute)
    )
    return {at: count for at, count in rows}


def stage_duration_percentiles(session: Session, *, since: datetime) -> list[StagePercentiles]:
    """p50 and p95 run time of each stage's succeeded runs that finished at or after ``since``."""
    duration = JobStage.duration_ms
    rows = session.execute(
        select(
            JobStage.name,
            func.count(),
            func.percentile_cont(0.5).within_group(duration),
            func.percentile_cont(0.95).within_group(duration),
        )
        .where(JobStage.status == StageStatus.SUCCEEDED, duration.is_not(None), JobStage.finished_at >= since)
        .group_by(JobStage.name)
        .order_by(func.min(JobStage.position), JobStage.name)
    )
    return [StagePercentiles(name, count, float(p50), float(p95)) for name, count, p50, p95 in rows]


def webhook_failure_counts(session: Session, *, since: datetime) -> tuple[int, int]:
    """Webhook events created at or after ``since``: how many ended failed, and how many there are in all."""
    row = session.execute(
        select(func.count().filter(WebhookEvent.status == DeliveryStatus.FAILED), func.count()).where(
            WebhookEvent.created_at >= since
        )
    ).one()
    return int(row[0]), int(row[1])
