"""Prometheus metrics of the whole system: counters from Redis, live gauges from Postgres, queue depths.

Every API replica and worker adds to the same counters in Redis (``core.metric_counts``), so any replica's
scrape sees the whole system; Postgres answers only what is live now, through partial indexes. A scrape
therefore costs the same however many jobs ever ran.
"""

import logging
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from core.job_input import JOB_KINDS
from core.metric_counts import QUEUE_WAIT_BUCKETS, STAGE_DURATION_BUCKETS, Counts, HistogramRow, read_counts
from core.model_loads import MODEL_LOADS_KEY, live_workers, parse_model_load_field
from core.redis_client import get_redis
from core.routing import QUEUES
from db import metrics as queries
from db.models import JobStatus
from db.session import new_session
from workers.celery_app import app as celery_app

log = logging.getLogger(__name__)

# A scrape that takes longer than this is dropped rather than left to load the database.
_STATEMENT_TIMEOUT_MS = 5000
# Model load times are kept per worker process; a bound on how many one scrape reads.
_MAX_MODEL_LOADS = 1000


class SystemCollector(Collector):
    """Every ``imagen_*`` family. A source that cannot be read is left out, and flagged by
    ``imagen_metrics_scrape_error{source}``, so the scrape still answers."""

    def collect(self) -> Iterator[Metric]:
        failed: dict[str, bool] = {}
        for source, read in (("database", self._database_families), ("redis", self._redis_families)):
            try:
                # Materialized first: a source fails whole, never with half its families written.
                families = list(read())
            except (SQLAlchemyError, RedisError, OSError) as exc:
                log.warning("metrics: cannot read the %s: %s: %s", source, type(exc).__name__, exc)
                failed[source] = True
                continue
            failed[source] = False
            yield from families
        errors = GaugeMetricFamily(
            "imagen_metrics_scrape_error", "1 when this scrape could not read the source", labels=["source"]
        )
        for source, is_failed in failed.items():
            errors.add_metric([source], int(is_failed))
        yield errors

    def _database_families(self) -> Iterator[Metric]:
        session = new_session()
        try:
            queries.begin_scrape(session, timeout_ms=_STATEMENT_TIMEOUT_MS)
            live = queries.live_job_counts(session)
            pending = queries.pending_webhook_events(session)
        finally:
            session.rollback()
            session.close()
        current = GaugeMetricFamily("imagen_jobs", "Jobs queued or running now", labels=["kind", "status"])
        for kind in _with_known({kind for kind, _ in live}, JOB_KINDS):
            for status in queries.LIVE_STATUSES:
                current.add_metric([kind, status.value], live.get((kind, status.value), 0))
        yield current
        outbox = GaugeMetricFamily("imagen_webhook_events_pending", "Webhook events waiting to be delivered")
        outbox.add_metric([], pending)
        yield outbox

    def _redis_families(self) -> Iterator[Metric]:
        lists = {queue: _priority_lists(queue) for queue in QUEUES}
        pipe = get_redis().pipeline(transaction=False)
        for keys in lists.values():
            for key in keys:
                pipe.llen(key)
        pipe.hscan(MODEL_LOADS_KEY, 0, count=_MAX_MODEL_LOADS)
        *lengths, (_, loads) = pipe.execute()
        depth = GaugeMetricFamily(
            "imagen_queue_depth", "Tasks waiting in each Celery queue (all priorities)", labels=["queue"]
        )
        position = 0
        for queue, keys in lists.items():
            depth.add_metric([queue], sum(lengths[position : position + len(keys)]))
            position += len(keys)
        yield depth
        yield from _model_loads(loads)
        yield from _counter_families(read_counts())


def _counter_families(counts: Counts) -> Iterator[Metric]:
    kinds = _with_known({*counts.submitted, *(kind for kind, _ in counts.finished)}, JOB_KINDS)
    submitted = CounterMetricFamily("imagen_jobs_submitted", "Jobs submitted", labels=["kind"])
    finished = CounterMetricFamily(
        "imagen_jobs_finished", "Jobs that ended, by how they ended", labels=["kind", "status"]
    )
    for kind in kinds:
        submitted.add_metric([kind], counts.submitted.get(kind, 0))
        for status in JobStatus:
            if status.is_terminal:
                finished.add_metric([kind, status.value], counts.finished.get((kind, status.value), 0))
    yield from (submitted, finished)
    yield _histogram(
        "imagen_stage_duration_seconds",
        "Run time of succeeded stages",
        ["stage", "preset"],
        STAGE_DURATION_BUCKETS,
        counts.stage_durations,
    )
    yield _histogram(
        "imagen_stage_queue_wait_seconds",
        "Time succeeded stages waited in their queue before their last attempt started",
        ["stage"],
        QUEUE_WAIT_BUCKETS,
        counts.stage_queue_waits,
    )
    deliveries = CounterMetricFamily(
        "imagen_webhook_deliveries",
        "Webhook delivery attempts by outcome (delivered: 2xx, http_error: another status, error: no answer)",
        labels=["outcome"],
    )
    for outcome in _with_known(counts.webhook_attempts, ["delivered", "http_error", "error"]):
        deliveries.add_metric([outcome], counts.webhook_attempts.get(outcome, 0))
    yield deliveries


def _histogram(
    name: str, documentation: str, labels: list[str], bounds: Sequence[float], rows: list[HistogramRow]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for row in rows:
        buckets = [(floatToGoString(b), float(n)) for b, n in zip(bounds, row.cumulative, strict=True)]
        buckets.append(("+Inf", float(row.count)))
        family.add_metric(list(row.labels), buckets, row.sum)
    return family


def _model_loads(loads: dict[bytes, bytes]) -> Iterator[GaugeMetricFamily]:
    """How long each worker process took to load each model, and which models the running ones hold."""
    seconds = GaugeMetricFamily(
        "imagen_model_load_seconds",
        "How long each worker process took to load a preset's model",
        labels=["preset", "model", "worker"],
    )
    rows: list[tuple[str, str, str, float]] = []
    for raw_field, raw_seconds in loads.items():
        parsed = parse_model_load_field(raw_field.decode(errors="replace"))
        try:
            value = float(raw_seconds)
        except ValueError:
            continue
        if parsed is not None:
            worker, preset, model = parsed
            seconds.add_metric([preset, model, worker], value)
            rows.append((worker, preset, model, value))
    yield seconds
    held = GaugeMetricFamily(
        "imagen_worker_models_loaded",
        "1 for each model a running worker process holds (a worker loads only what its queues' stages run)",
        labels=["preset", "model", "worker"],
    )
    alive = live_workers({worker for worker, *_ in rows}) if rows else set()
    for worker, preset, model, _ in rows:
        if worker in alive:
            held.add_metric([preset, model, worker], 1)
    yield held


def queue_depths() -> dict[str, int]:
    """Tasks waiting in each Celery queue (all priorities), read from Redis in one round trip."""
    lists = {queue: _priority_lists(queue) for queue in QUEUES}
    pipe = get_redis().pipeline(transaction=False)
    for keys in lists.values():
        for key in keys:
            pipe.llen(key)
    lengths = iter(pipe.execute())
    return {queue: sum(next(lengths) for _ in keys) for queue, keys in lists.items()}


def _priority_lists(queue: str) -> list[str]:
    """The Redis lists of a Celery queue: kombu keeps one per priority step, the first under the bare name."""
    options = celery_app.conf.broker_transport_options
    # kombu's defaults, for a configuration without priorities.
    steps: list[int] = options.get("priority_steps", [0, 3, 6, 9])
    sep: str = options.get("sep", "\x06\x16")
    return [f"{queue}{sep}{step}" if step else queue for step in steps]


def _with_known(seen: Iterable[str], known: Iterable[str]) -> list[str]:
    """The known label values (reported as 0 before their first row), then any other seen, sorted."""
    known = list(known)
    return known + sorted(set(seen) - set(known))


REGISTRY = CollectorRegistry()
REGISTRY.register(SystemCollector())
