"""Build the FastAPI app and mount the routers."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.openapi import install_openapi
from api.request_guard import RequestGuard
from api.routes import admin, events, files, health, jobs, metrics, models, search, webhooks
from core.config import get_settings
from core.tracing import setup_tracing
from storage.factory import process_store


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    if get_settings().require_secret_key and not get_settings().secret_key:
        raise RuntimeError("IMAGEN_REQUIRE_SECRET_KEY is set: set IMAGEN_SECRET_KEY, the same on every API replica")
    process_store()  # the bucket exists before the first request
    yield


def create_app() -> FastAPI:
    """The imagen-queue HTTP API."""
    app = FastAPI(
        title="imagen-queue",
        version="0.1.0",
        summary="Imagen-style cascaded text-to-image generation as durable async jobs.",
        lifespan=_lifespan,
    )
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(RequestGuard)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(search.router)
    app.include_router(models.router)
    app.include_router(files.router)
    app.include_router(admin.router)
    # Off unless IMAGEN_OTLP_ENDPOINT is set; Celery too, so that each job's messages carry its trace.
    setup_tracing("api", fastapi_app=app, celery=True)
    return app


app = create_app()
