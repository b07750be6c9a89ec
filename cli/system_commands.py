"""Commands that run the system or one of its parts: up, api, worker, beat, migrate."""

from pathlib import Path

import click

from cli.output import OK
from core.routing import QUEUES

_JOB_QUEUES = ",".join(QUEUES)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--stage-workers",
    is_flag=True,
    help="two model workers, text+base and sr+caption+embed, each holding only its stages' models:"
    " stage II of one job runs while stage I of the next does",
)
def up(host: str, port: int, stage_workers: bool) -> int:
    """Run everything on this machine (embedded Postgres, Redis, API, workers, beat)."""
    from cli.embedded import run_embedded

    return run_embedded(host, port, stage_workers=stage_workers)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True)
def api(host: str, port: int, workers: int) -> int:
    """Serve the HTTP API."""
    import uvicorn

    from core.config import get_settings
    from core.logs import uvicorn_log_config

    log_config = uvicorn_log_config(get_settings().log_format)
    uvicorn.run("api.main:app", host=host, port=port, workers=workers, log_level="info", log_config=log_config)
    return OK


@click.command()
@click.option("--queues", default=_JOB_QUEUES, show_default=True, help="comma-separated")
@click.option("--pool", default="solo", show_default=True, help="solo for GPU stages (one process per GPU)")
@click.option("--concurrency", type=int, default=0)
@click.option("--hostname", default=None)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, pool: str, concurrency: int, hostname: str | None, loglevel: str) -> int:
    """Run a Celery worker."""
    from core.config import get_settings
    from core.presets import get_preset
    from core.routing import MODEL_QUEUES
    from workers.celery_app import app
    from workers.preset_files import build_preset

    if set(queues.split(",")) & set(MODEL_QUEUES):
        # A local preset (tiny, toy) is built, or rebuilt after its weights changed, before the first
        # task needs it; a no-op when the build is current.
        settings = get_settings()
        build_preset(get_preset(settings.model_preset), settings.resolved_models_dir)
    argv = ["worker", "--queues", queues, "--pool", pool, "--loglevel", loglevel]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if hostname:
        argv += ["--hostname", hostname]
    app.worker_main(argv)
    return OK


@click.command()
@click.option("--schedule", default=None)
@click.option("--loglevel", default="INFO", show_default=True)
def beat(schedule: str | None, loglevel: str) -> int:
    """Run the periodic scheduler (the sweeper); run exactly one."""
    from core.config import get_settings
    from workers.celery_app import app

    schedule = schedule or str(get_settings().data_dir / "celerybeat-schedule")
    Path(schedule).parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--schedule", schedule, "--loglevel", loglevel])
    return OK


@click.command()
def migrate() -> int:
    """Bring the database to the latest schema (and register IMAGEN_ADMIN_API_KEY, when set)."""
    from cli.connection import use_embedded_database
    from cli.embedded import register_admin_key
    from core.config import get_settings
    from db.migrate import upgrade
    from db.session import session_scope

    use_embedded_database()
    upgrade()
    print("database is at the latest schema")
    key = get_settings().admin_api_key
    if key:
        # Compose runs this one-shot before the API: IMAGEN_ADMIN_API_KEY works from the first request.
        with session_scope() as session:
            added = register_admin_key(session, key)
        print("admin API key registered" if added else "admin API key already registered")
    return OK


COMMANDS = [up, api, worker, beat, migrate]
