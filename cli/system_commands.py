"""Commands that run the system or one of its parts: up, api, worker, beat, migrate."""

import argparse
from pathlib import Path


def cmd_up(args: argparse.Namespace) -> int:
    from cli.embedded import run_embedded

    return run_embedded(args.host, args.port, stage_workers=args.stage_workers)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("api.main:app", host=args.host, port=args.port, workers=args.workers, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from core.presets import get_preset
    from core.routing import MODEL_QUEUES
    from workers.celery_app import app
    from workers.preset_files import build_preset

    if set(args.queues.split(",")) & set(MODEL_QUEUES):
        # A local preset (tiny, toy) is built, or rebuilt after its weights changed, before the first
        # task needs it; a no-op when the build is current.
        settings = get_settings()
        build_preset(get_preset(settings.model_preset), settings.resolved_models_dir)
    argv = ["worker", "--queues", args.queues, "--pool", args.pool, "--loglevel", args.loglevel]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from workers.celery_app import app

    schedule = args.schedule or str(get_settings().data_dir / "celerybeat-schedule")
    Path(schedule).parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--schedule", schedule, "--loglevel", args.loglevel])
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from cli.embedded import register_admin_key
    from core.config import get_settings
    from db.migrate import upgrade
    from db.session import session_scope

    upgrade()
    print("database is at the latest schema")
    key = get_settings().admin_api_key
    if key:
        # Compose runs this one-shot before the API: IMAGEN_ADMIN_API_KEY works from the first request.
        with session_scope() as session:
            added = register_admin_key(session, key)
        print("admin API key registered" if added else "admin API key already registered")
    return 0
