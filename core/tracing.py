"""Optional OpenTelemetry tracing: off unless ``IMAGEN_OTLP_ENDPOINT`` names an OTLP/HTTP collector.

When on, each process sends its spans there: the API's requests (FastAPI), the Celery tasks it sends and
the workers run (Celery's instrumentation carries the trace context in each message's headers, so a job's
stages, sent on from worker to worker, stay in the trace of the request that submitted it), and every
SQLAlchemy statement and Redis command under them. The OpenTelemetry packages are the ``otel`` extra;
nothing imports them while tracing is off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.config import get_settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_started: set[str] = set()


def tracing_enabled() -> bool:
    return bool(get_settings().otlp_endpoint)


def setup_tracing(role: str, *, fastapi_app: Any = None, celery: bool = False) -> bool:
    """Start tracing this process as ``role`` (api, worker, beat) if an OTLP endpoint is configured;
    instrument ``fastapi_app`` and, with ``celery``, Celery. Idempotent; False when tracing is off."""
    settings = get_settings()
    if not settings.otlp_endpoint:
        return False
    with _lock:
        if "provider" not in _started:
            _start_provider(settings.otlp_endpoint, f"{settings.otel_service_name}-{role}", role)
            _started.add("provider")
        if celery and "celery" not in _started:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument()
            _started.add("celery")
    if fastapi_app is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # /metrics and the health checks are polled all day: no trace for them.
        FastAPIInstrumentor.instrument_app(fastapi_app, excluded_urls="/metrics,/healthz,/readyz")
    return True


def _start_provider(endpoint: str, service: str, role: str) -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service, "imagen.role": role}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument()
    log.info("tracing to %s as %s", endpoint, service)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with a job; None when tracing is off."""
    if "provider" not in _started:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def job_trace(traceparent: str | None) -> Iterator[None]:
    """Within the block, the job's trace is the current one: a message sent here joins the trace of the
    request that submitted the job, whichever job's run sends it (a batch sends its companions on)."""
    if not traceparent or "provider" not in _started:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        context.detach(token)


def trace_engine(engine: Any) -> None:
    """Trace ``engine``'s statements when tracing is on (db/session.py calls it for every engine it makes)."""
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine)


def flush_tracing() -> None:
    """Send the spans still buffered (a process about to exit)."""
    if "provider" not in _started:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush(5000)
