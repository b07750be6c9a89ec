"""``imagen-queue``: run the embedded system, its parts, and a client."""

import argparse
import logging
import sys
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from cli.client import ApiClient

from core.routing import QUEUES

_JOB_QUEUES = ",".join(QUEUES)


def _cmd_up(args: argparse.Namespace) -> int:
    from cli.embedded import run_embedded

    return run_embedded(args.host, args.port)


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("api.main:app", host=args.host, port=args.port, workers=args.workers, log_level="info")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
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


def _cmd_beat(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from workers.celery_app import app

    schedule = args.schedule or str(get_settings().data_dir / "celerybeat-schedule")
    Path(schedule).parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--schedule", schedule, "--loglevel", args.loglevel])
    return 0


def _cmd_migrate(_: argparse.Namespace) -> int:
    from db.migrate import upgrade

    upgrade()
    print("database is at the latest schema")
    return 0


def _cmd_build_tiny(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from workers.tiny_models import build_tiny

    folder = build_tiny(args.models_dir or get_settings().resolved_models_dir, force=args.force)
    print(f"tiny preset ready in {folder}")
    return 0


def _cmd_build_toy(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from core.preset_files import ModelsNotFoundError
    from workers.toy_models import build_toy

    try:
        folder = build_toy(args.models_dir or get_settings().resolved_models_dir, force=args.force)
    except ModelsNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"toy preset ready in {folder}")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    import os

    from core.config import get_settings
    from core.preset_files import is_available
    from core.presets import PRESETS

    settings = get_settings()
    models_dir = args.models_dir or settings.resolved_models_dir
    if os.environ.get("IMAGEN_MODEL_PRESET"):
        active, note = settings.model_preset, "IMAGEN_MODEL_PRESET"
    else:
        from cli.embedded import default_model_preset

        active = default_model_preset(models_dir)
        note = f"what `imagen-queue up` runs here; other processes default to {settings.model_preset}"
    print(f"models dir: {models_dir}")
    print(f"active preset: {active} ({note})")
    for name, preset in PRESETS.items():
        available = "available" if is_available(preset, models_dir) else "not available"
        if not preset.local:
            how = "read from the models dir or the Hugging Face cache, never downloaded"
        else:
            how = f"build: {preset.build_command}"
        print(f"\n{name}{'  [active]' if name == active else ''}  {available}  ({how})")
        rows = [
            (
                spec.name,
                str(spec.resolution),
                spec.kind,
                preset.request_key(spec),
                str(spec.default_steps),
                f"{spec.default_guidance:g}",
                "-" if spec.max_noise_level is None else f"{spec.default_noise_level} (max {spec.max_noise_level})",
            )
            for spec in preset.stages
        ]
        _print_table(("  STAGE", "PX", "KIND", "REQUEST KEY", "STEPS", "GUIDANCE", "NOISE LEVEL"), _indent(rows))
        embedder = preset.embedder
        print(f"  captioner {preset.captioner.source}; embedder {embedder.source}", end="")
        print(f" ({embedder.model_id}, {embedder.dim} dims)")
    return 0


def _indent(rows: "Sequence[tuple[str, ...]]") -> list[tuple[str, ...]]:
    return [(f"  {row[0]}", *row[1:]) for row in rows]


def _cmd_generate(args: argparse.Namespace) -> int:
    from cli.client import generate

    client = _client(args)
    body: dict[str, object] = {"kind": "generate", "input": {"prompt": args.prompt, "num_images": args.num_images}}
    if args.resolution is not None:
        body["input"]["resolution"] = args.resolution  # type: ignore[index]
    if args.seed is not None:
        body["input"]["seed"] = args.seed  # type: ignore[index]
    if args.negative_prompt:
        body["input"]["negative_prompt"] = args.negative_prompt  # type: ignore[index]
    if args.caption:
        body["input"]["caption"] = True  # type: ignore[index]
    if args.index:
        body["input"]["index"] = True  # type: ignore[index]
    return generate(client, body, Path(args.out), args.timeout)


def _client(args: argparse.Namespace) -> "ApiClient":
    from cli.client import ApiClient, resolve_api_key
    from core.config import get_settings

    settings = get_settings()
    return ApiClient(args.api_url or settings.public_url, resolve_api_key(settings, args.api_key))


def _cmd_caption(args: argparse.Namespace) -> int:
    from cli.client import image_field, run_job

    body = {
        "kind": "caption",
        "input": {"image": image_field(args.image), "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams},
    }
    job = run_job(_client(args), body, args.timeout)
    if job is None:
        return 1
    print(job["output"]["caption"])
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from cli.client import image_field, run_job

    body: dict[str, Any] = {"kind": "index", "input": {"image": image_field(args.image), "collection": args.collection}}
    if args.text:
        body["input"]["text"] = args.text
    job = run_job(_client(args), body, args.timeout)
    if job is None:
        return 1
    print(f"indexed {args.image} in {args.collection!r}: {job['output']['embedding_id']}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from cli.client import image_field

    body: dict[str, Any] = {"collection": args.collection, "k": args.k}
    if args.image:
        body["image"] = image_field(Path(args.query))
    else:
        body["text"] = args.query
    for hit in _client(args).search(body)["results"]:
        label = hit["caption"] or hit["text"] or ""
        print(f"{hit['score']:.4f}  job {hit['job_id']}  {label}\n        {hit['image_url']}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    job = _client(args).job(args.job_id)
    print(json.dumps(job, indent=2))
    return 0 if job["status"] != "failed" else 1


def _cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    print(f"job {job['id']} {job['status']}{' (stops at its next step)' if job['status'] == 'running' else ''}")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    job = _client(args).watch(args.job_id, args.timeout)
    print(f"job {job['id']} {job['status']}{': ' + job['error'] if job.get('error') else ''}")
    return 0 if job["status"] == "succeeded" else 1


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", default=None, help="default: IMAGEN_PUBLIC_URL")
    parser.add_argument("--api-key", default=None, help="default: IMAGEN_API_KEY, else the embedded admin key")
    parser.add_argument("--timeout", type=float, default=600)


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        tenant = tenants.get_or_create_tenant(session, name=args.tenant)
        _, key = tenants.create_api_key(session, tenant=tenant, is_admin=args.admin)
    print(key)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        rows = [
            (key.prefix, key.tenant.name, "yes" if key.is_admin else "no", _when(key.created_at), _when(key.revoked_at))
            for key in tenants.list_api_keys(session, tenant_name=args.tenant)
        ]
    _print_table(("PREFIX", "TENANT", "ADMIN", "CREATED", "REVOKED"), rows)
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        found = tenants.find_live_api_keys(session, key_or_prefix=args.key)
        if len(found) != 1:
            problem = "no live key matches" if not found else f"{len(found)} live keys match"
            print(f"{problem} {args.key!r}; give a prefix from 'keys list', or the whole key", file=sys.stderr)
            return 1
        tenants.revoke_api_key(session, key=found[0])
        print(f"revoked {found[0].prefix} (tenant {found[0].tenant.name})")
    return 0


def _cmd_tenants_list(_: argparse.Namespace) -> int:
    from core.config import get_settings
    from db import tenants
    from db.session import session_scope

    settings = get_settings()
    with session_scope() as session:
        rows = [
            (
                tenant.name,
                _when(tenant.created_at),
                _limit(tenant.requests_per_minute, settings.default_requests_per_minute),
                _limit(tenant.max_jobs_in_flight, settings.default_max_jobs_in_flight),
                str(in_flight),
            )
            for tenant, in_flight in tenants.list_tenants(session)
        ]
    _print_table(("TENANT", "CREATED", "REQUESTS/MIN", "MAX IN FLIGHT", "IN FLIGHT"), rows)
    return 0


def _cmd_tenants_set_quota(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    # An option left out is absent from args (argparse.SUPPRESS): that limit stays as it is.
    rpm = getattr(args, "requests_per_minute", tenants.UNSET)
    in_flight = getattr(args, "max_jobs_in_flight", tenants.UNSET)
    if rpm is tenants.UNSET and in_flight is tenants.UNSET:
        print("nothing to set: give --requests-per-minute and/or --max-jobs-in-flight", file=sys.stderr)
        return 2
    with session_scope() as session:
        tenant = tenants.get_tenant(session, name=args.name)
        if tenant is None:
            print(f"no tenant {args.name!r}", file=sys.stderr)
            return 1
        tenants.set_quota(session, tenant=tenant, requests_per_minute=rpm, max_jobs_in_flight=in_flight)
        now_rpm, now_in_flight = tenant.requests_per_minute, tenant.max_jobs_in_flight
    print(
        f"tenant {args.name}: requests_per_minute {_raw_limit(now_rpm)}, max_jobs_in_flight {_raw_limit(now_in_flight)}"
    )
    return 0


def _quota_value(text: str) -> int | None:
    """A quota on the command line: a number (<= 0: unlimited) or 'default'."""
    if text == "default":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'default', got {text!r}") from None


def _raw_limit(value: int | None) -> str:
    return "default" if value is None else "unlimited" if value <= 0 else str(value)


def _limit(own: int | None, default: int) -> str:
    value = default if own is None else own
    shown = "unlimited" if value <= 0 else str(value)
    return f"{shown} (default)" if own is None else shown


def _when(moment: "datetime | None") -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "-"


def _print_table(header: tuple[str, ...], rows: "Sequence[tuple[str, ...]]") -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagen-queue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded Postgres, Redis, API, worker)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.set_defaults(func=_cmd_up)

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default=_JOB_QUEUES, help=f"comma-separated (default: {_JOB_QUEUES})")
    worker.add_argument("--pool", default="solo", help="solo for GPU stages (one process per GPU)")
    worker.add_argument("--concurrency", type=int, default=0)
    worker.add_argument("--hostname", default=None)
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=_cmd_worker)

    beat = sub.add_parser("beat", help="run the periodic scheduler (the sweeper)")
    beat.add_argument("--schedule", default=None)
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=_cmd_beat)

    migrate = sub.add_parser("migrate", help="bring the database to the latest schema")
    migrate.set_defaults(func=_cmd_migrate)

    models = sub.add_parser("models", help="model presets")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build-tiny", help="build the random-weight tiny preset (no download)")
    build.add_argument("--models-dir", type=Path, default=None)
    build.add_argument("--force", action="store_true")
    build.set_defaults(func=_cmd_build_tiny)
    build_toy = models_sub.add_parser(
        "build-toy", help="assemble the toy preset from the committed weights (models/toy/) and all-MiniLM-L6-v2"
    )
    build_toy.add_argument("--models-dir", type=Path, default=None)
    build_toy.add_argument("--force", action="store_true")
    build_toy.set_defaults(func=_cmd_build_toy)
    list_models = models_sub.add_parser("list", help="list the presets, their stages, and which are available here")
    list_models.add_argument("--models-dir", type=Path, default=None)
    list_models.set_defaults(func=_cmd_models_list)

    gen = sub.add_parser("generate", help="submit a generate job, wait, download its images")
    gen.add_argument("prompt")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--resolution", type=int, default=None, help="default: the preset's final resolution")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--out", default="out")
    gen.add_argument("--caption", action="store_true", help="also caption the final images")
    gen.add_argument("--index", action="store_true", help="also add the final images to the search index")
    _add_client_options(gen)
    gen.set_defaults(func=_cmd_generate)

    cap = sub.add_parser("caption", help="caption an image file (a caption job)")
    cap.add_argument("image", type=Path)
    cap.add_argument("--max-new-tokens", type=int, default=30)
    cap.add_argument("--num-beams", type=int, default=1)
    _add_client_options(cap)
    cap.set_defaults(func=_cmd_caption)

    idx = sub.add_parser("index", help="add an image file to the search index (an index job)")
    idx.add_argument("image", type=Path)
    idx.add_argument("--text", default=None)
    idx.add_argument("--collection", default="default")
    _add_client_options(idx)
    idx.set_defaults(func=_cmd_index)

    for name, func, text in (
        ("status", _cmd_status, "print a job as JSON"),
        ("cancel", _cmd_cancel, "cancel a job"),
        ("watch", _cmd_watch, "follow a job's progress until it ends (exit 1 unless it succeeded)"),
    ):
        one = sub.add_parser(name, help=text)
        one.add_argument("job_id")
        _add_client_options(one)
        one.set_defaults(func=func)

    find = sub.add_parser("search", help="search the index by text (or, with --image, by an image file)")
    find.add_argument("query", help="the text, or with --image the path of an image file")
    find.add_argument("--image", action="store_true")
    find.add_argument("--collection", default="default")
    find.add_argument("-k", type=int, default=10)
    _add_client_options(find)
    find.set_defaults(func=_cmd_search)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--admin", action="store_true")
    create.set_defaults(func=_cmd_keys_create)
    revoke = keys_sub.add_parser("revoke", help="revoke a key: it fails authentication from now on")
    revoke.add_argument("key", metavar="KEY_OR_PREFIX", help="the key, or its prefix as 'keys list' shows it")
    revoke.set_defaults(func=_cmd_keys_revoke)
    list_keys = keys_sub.add_parser("list", help="list keys (their prefixes; a key itself is never stored)")
    list_keys.add_argument("--tenant", default=None)
    list_keys.set_defaults(func=_cmd_keys_list)

    tenants = sub.add_parser("tenants", help="tenants and their quotas")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    list_tenants = tenants_sub.add_parser("list", help="list tenants, their limits and jobs in flight")
    list_tenants.set_defaults(func=_cmd_tenants_list)
    quota = tenants_sub.add_parser(
        "set-quota", help="set a tenant's limits (a number, 0 for unlimited, or 'default' for IMAGEN_DEFAULT_*)"
    )
    quota.add_argument("name")
    for flag in ("--requests-per-minute", "--max-jobs-in-flight"):
        quota.add_argument(flag, type=_quota_value, default=argparse.SUPPRESS, metavar="N")
    quota.set_defaults(func=_cmd_tenants_set_quota)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
