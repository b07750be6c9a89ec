"""Prometheus metrics of the whole system."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.metrics import REGISTRY

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def read_metrics() -> Response:
    """Jobs, stages, queues, webhooks and model loads, in Prometheus' text format (no key, like /healthz)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
