"""The system's counters and histograms, kept in Redis where every API replica and worker adds to them.

Counted where the event happens, after its transaction commits, so a scrape reads a few hashes however
many jobs ever ran (counting rows at each scrape grew with the tables). They count since Redis last
started empty: Prometheus reads a restart as a counter reset, as it does a process restart. Counting is
best effort: with Redis unreachable an event goes uncounted, never failed.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from core.redis_client import get_redis

log = logging.getLogger(__name__)

JOBS_SUBMITTED = "imagen:metrics:jobs-submitted"  # field: kind
JOBS_FINISHED = "imagen:metrics:jobs-finished"  # field: kind|status
WEBHOOK_ATTEMPTS = "imagen:metrics:webhook-attempts"  # field: outcome
STAGE_DURATION = "imagen:metrics:stage-duration"  # fields: stage|preset|<bucket index>, |count, |sum
STAGE_QUEUE_WAIT = "imagen:metrics:stage-queue-wait"  # fields: stage|<bucket index>, |count, |sum

# From 10 ms (a tiny CLIP) to 10 min (a real-size stage on a slow card).
STAGE_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Waits grow with the backlog, well past a stage's run time.
QUEUE_WAIT_BUCKETS = (*STAGE_DURATION_BUCKETS, 1800, 3600)

_SEP = "|"


@dataclass(frozen=True)
class HistogramRow:
    """One label set of a histogram: observations at or below each bound (in the bounds' order), count, sum."""

    labels: tuple[str, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float


@dataclass(frozen=True)
class StageObservation:
    """A stage that succeeded: its run time and how long it waited in its queue (None if unknown)."""

    stage: str
    preset: str
    duration_s: float
    queue_wait_s: float | None


def count_events(
    *,
    submitted: Sequence[str] = (),
    finished: Sequence[tuple[str, str]] = (),
    stages: Sequence[StageObservation] = (),
    webhook_attempts: Sequence[str] = (),
) -> None:
    """Add events to the counters in one round trip: job kinds submitted, (kind, status) of jobs that
    ended, stages that succeeded, webhook attempt outcomes."""
    if not (submitted or finished or stages or webhook_attempts):
        return
    pipe = get_redis().pipeline(transaction=False)
    for kind in submitted:
        pipe.hincrby(JOBS_SUBMITTED, kind, 1)
    for kind, status in finished:
        pipe.hincrby(JOBS_FINISHED, f"{kind}{_SEP}{status}", 1)
    for outcome in webhook_attempts:
        pipe.hincrby(WEBHOOK_ATTEMPTS, outcome, 1)
    for stage in stages:
        _observe(pipe, STAGE_DURATION, (stage.stage, stage.preset), STAGE_DURATION_BUCKETS, stage.duration_s)
        if stage.queue_wait_s is not None and stage.queue_wait_s >= 0:
            _observe(pipe, STAGE_QUEUE_WAIT, (stage.stage,), QUEUE_WAIT_BUCKETS, stage.queue_wait_s)
    try:
        pipe.execute()
    except RedisError as exc:
        log.warning("metrics: events not counted, Redis is unreachable: %s", exc)


def _observe(pipe: object, key: str, labels: tuple[str, ...], bounds: Sequence[float], value: float) -> None:
    prefix = _SEP.join(labels) + _SEP
    # Only the first bucket the value falls in is counted; reading adds them up into Prometheus' cumulative form.
    bucket = next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))
    pipe.hincrby(key, f"{prefix}{bucket}", 1)  # type: ignore[attr-defined]
    pipe.hincrby(key, f"{prefix}count", 1)  # type: ignore[attr-defined]
    pipe.hincrbyfloat(key, f"{prefix}sum", value)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Counts:
    """Every counter and histogram, as read at one scrape."""

    submitted: dict[str, int]
    finished: dict[tuple[str, str], int]
    webhook_attempts: dict[str, int]
    stage_durations: list[HistogramRow]
    stage_queue_waits: list[HistogramRow]


def read_counts() -> Counts:
    """The counters, in one round trip; raises RedisError if Redis cannot be read."""
    pipe = get_redis().pipeline(transaction=False)
    for key in (JOBS_SUBMITTED, JOBS_FINISHED, WEBHOOK_ATTEMPTS, STAGE_DURATION, STAGE_QUEUE_WAIT):
        pipe.hgetall(key)
    submitted, finished, attempts, durations, waits = (_decoded(raw) for raw in pipe.execute())
    return Counts(
        submitted={kind: int(n) for kind, n in submitted.items()},
        finished={tuple(field.split(_SEP, 1)): int(n) for field, n in finished.items()},  # type: ignore[misc]
        webhook_attempts={outcome: int(n) for outcome, n in attempts.items()},
        stage_durations=_histogram_rows(durations, label_count=2, bounds=STAGE_DURATION_BUCKETS),
        stage_queue_waits=_histogram_rows(waits, label_count=1, bounds=QUEUE_WAIT_BUCKETS),
    )


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {field.decode(errors="replace"): value.decode() for field, value in raw.items()}


def _histogram_rows(fields: dict[str, str], *, label_count: int, bounds: Sequence[float]) -> list[HistogramRow]:
    per_labels: dict[tuple[str, ...], dict[str, str]] = {}
    for field, value in fields.items():
        *names, part = field.split(_SEP)
        if len(names) == label_count:
            per_labels.setdefault(tuple(names), {})[part] = value
    rows = []
    for labels, parts in sorted(per_labels.items()):
        running = 0
        cumulative = []
        for index in range(len(bounds)):
            running += int(parts.get(str(index), 0))
            cumulative.append(running)
        rows.append(HistogramRow(labels, tuple(cumulative), int(parts.get("count", 0)), float(parts.get("sum", 0))))
    return rows
