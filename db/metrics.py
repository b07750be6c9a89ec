"""Aggregates for the Prometheus scrape, each one grouped query over the rows. The caller owns the transaction.

Histograms are counted in SQL (a ``count(*) FILTER`` per bucket), so a scrape reads a few rows per label
set however many stages ran.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, func, select, text
from sqlalchemy.orm import Session

from db.models import Job, JobStage, StageStatus, WebhookAttempt, WebhookEvent


@dataclass(frozen=True)
class HistogramRow:
    """One label set of a histogram: observations at or below each bound (in the bounds' order), count, sum."""

    labels: tuple[str, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float


def begin_scrape(session: Session, *, timeout_ms: int) -> None:
    """Make the session's transaction read-only, and drop any statement in it that runs past ``timeout_ms``."""
    session.execute(text("SET TRANSACTION READ ONLY"))
    session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))


def job_counts(session: Session) -> dict[tuple[str, str], int]:
    """Jobs by (kind, status)."""
    rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
    return {(kind, str(status)): count for kind, status, count in rows}


def stage_duration_histograms(session: Session, *, bounds: Sequence[float]) -> list[HistogramRow]:
    """Run time of succeeded stages by (stage, preset), in seconds."""
    duration_ms = JobStage.duration_ms
    query = (
        select(
            JobStage.name,
            Job.preset,
            func.count(),
            func.coalesce(func.sum(duration_ms), 0),
            *_bucket_counts(duration_ms, [bound * 1000 for bound in bounds]),
        )
        .join(Job, Job.id == JobStage.job_id)
        .where(JobStage.status == StageStatus.SUCCEEDED, duration_ms.is_not(None))
        .group_by(JobStage.name, Job.preset)
    )
    return [
        HistogramRow((stage, preset), tuple(buckets), count, float(total_ms or 0) / 1000)
        for stage, preset, count, total_ms, *buckets in session.execute(query)
    ]


def stage_queue_wait_histograms(session: Session, *, bounds: Sequence[float]) -> list[HistogramRow]:
    """Time succeeded stages waited between being queued and starting (their last attempt), by stage, in seconds."""
    wait_s = func.extract("epoch", JobStage.started_at - JobStage.queued_at)
    query = (
        select(JobStage.name, func.count(), func.coalesce(func.sum(wait_s), 0), *_bucket_counts(wait_s, bounds))
        .where(
            JobStage.status == StageStatus.SUCCEEDED,
            JobStage.queued_at.is_not(None),
            JobStage.started_at >= JobStage.queued_at,
        )
        .group_by(JobStage.name)
    )
    return [
        HistogramRow((stage,), tuple(buckets), count, float(total_s))
        for stage, count, total_s, *buckets in session.execute(query)
    ]


def webhook_attempt_outcomes(session: Session) -> dict[str, int]:
    """Delivery attempts ever made: ``delivered`` (a 2xx), ``http_error`` (another status), ``error`` (no answer)."""
    status = WebhookAttempt.status_code
    delivered = status.between(200, 299)
    row = session.execute(
        select(
            func.count().filter(delivered),
            func.count().filter(status.is_not(None), ~delivered),
            func.count().filter(status.is_(None)),
        ).select_from(WebhookAttempt)
    ).one()
    return {"delivered": row[0], "http_error": row[1], "error": row[2]}


def webhook_event_counts(session: Session) -> dict[str, int]:
    """Outbox events by delivery status."""
    rows = session.execute(select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status))
    return {status: count for status, count in rows}


def _bucket_counts(value: SQLColumnExpression[Any], bounds: Sequence[float]) -> list[ColumnElement[int]]:
    return [func.count().filter(value <= bound) for bound in bounds]
