"""``imagen-queue``: run the embedded system, its parts, and a client."""

import argparse
import logging
import sys
from pathlib import Path

from cli.admin_commands import (
    cmd_keys_create,
    cmd_keys_list,
    cmd_keys_revoke,
    cmd_tenants_list,
    cmd_tenants_set_quota,
    priority_ceiling_value,
    quota_value,
)
from cli.client_commands import cmd_cancel, cmd_caption, cmd_generate, cmd_index, cmd_search, cmd_status, cmd_watch
from cli.model_commands import cmd_build_tiny, cmd_build_toy, cmd_models_list
from cli.models_fetch import cmd_models_fetch
from cli.system_commands import cmd_api, cmd_beat, cmd_migrate, cmd_up, cmd_worker
from core.routing import QUEUES

_JOB_QUEUES = ",".join(QUEUES)


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", default=None, help="default: IMAGEN_PUBLIC_URL")
    parser.add_argument("--api-key", default=None, help="default: IMAGEN_API_KEY, else the embedded admin key")
    parser.add_argument("--timeout", type=float, default=600)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagen-queue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded Postgres, Redis, API, worker)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument(
        "--stage-workers",
        action="store_true",
        help="two model workers, text+base and sr+caption+embed, each holding only its stages' models:"
        " stage II of one job runs while stage I of the next does",
    )
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default=_JOB_QUEUES, help=f"comma-separated (default: {_JOB_QUEUES})")
    worker.add_argument("--pool", default="solo", help="solo for GPU stages (one process per GPU)")
    worker.add_argument("--concurrency", type=int, default=0)
    worker.add_argument("--hostname", default=None)
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    beat = sub.add_parser("beat", help="run the periodic scheduler (the sweeper)")
    beat.add_argument("--schedule", default=None)
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=cmd_beat)

    migrate = sub.add_parser("migrate", help="bring the database to the latest schema")
    migrate.set_defaults(func=cmd_migrate)

    models = sub.add_parser("models", help="model presets")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build-tiny", help="build the random-weight tiny preset (no download)")
    build.add_argument("--models-dir", type=Path, default=None)
    build.add_argument("--force", action="store_true")
    build.set_defaults(func=cmd_build_tiny)
    build_toy = models_sub.add_parser(
        "build-toy", help="assemble the toy preset from the committed weights (models/toy/) and all-MiniLM-L6-v2"
    )
    build_toy.add_argument("--models-dir", type=Path, default=None)
    build_toy.add_argument("--force", action="store_true")
    build_toy.set_defaults(func=cmd_build_toy)
    list_models = models_sub.add_parser("list", help="list the presets, their stages, and which are available here")
    list_models.add_argument("--models-dir", type=Path, default=None)
    list_models.set_defaults(func=cmd_models_list)
    fetch = models_sub.add_parser(
        "fetch", help="download a hub preset's weights into the Hugging Face cache (HF_TOKEN), or build a local one"
    )
    fetch.add_argument("preset")
    fetch.add_argument("--models-dir", type=Path, default=None)
    fetch.set_defaults(func=cmd_models_fetch)

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
    gen.set_defaults(func=cmd_generate)

    cap = sub.add_parser("caption", help="caption an image file (a caption job)")
    cap.add_argument("image", type=Path)
    cap.add_argument("--max-new-tokens", type=int, default=30)
    cap.add_argument("--num-beams", type=int, default=1)
    _add_client_options(cap)
    cap.set_defaults(func=cmd_caption)

    idx = sub.add_parser("index", help="add an image file to the search index (an index job)")
    idx.add_argument("image", type=Path)
    idx.add_argument("--text", default=None)
    idx.add_argument("--collection", default="default")
    _add_client_options(idx)
    idx.set_defaults(func=cmd_index)

    for name, func, text in (
        ("status", cmd_status, "print a job as JSON"),
        ("cancel", cmd_cancel, "cancel a job"),
        ("watch", cmd_watch, "follow a job's progress until it ends (exit 1 unless it succeeded)"),
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
    find.set_defaults(func=cmd_search)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--admin", action="store_true")
    create.set_defaults(func=cmd_keys_create)
    revoke = keys_sub.add_parser("revoke", help="revoke a key: it fails authentication from now on")
    revoke.add_argument("key", metavar="KEY_OR_PREFIX", help="the key, or its prefix as 'keys list' shows it")
    revoke.set_defaults(func=cmd_keys_revoke)
    list_keys = keys_sub.add_parser("list", help="list keys (their prefixes; a key itself is never stored)")
    list_keys.add_argument("--tenant", default=None)
    list_keys.set_defaults(func=cmd_keys_list)

    tenants = sub.add_parser("tenants", help="tenants and their quotas")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    list_tenants = tenants_sub.add_parser("list", help="list tenants, their limits and jobs in flight")
    list_tenants.set_defaults(func=cmd_tenants_list)
    quota = tenants_sub.add_parser(
        "set-quota", help="set a tenant's limits (a number, 0 for unlimited, or 'default' for IMAGEN_DEFAULT_*)"
    )
    quota.add_argument("name")
    for flag in ("--requests-per-minute", "--max-jobs-in-flight"):
        quota.add_argument(flag, type=quota_value, default=argparse.SUPPRESS, metavar="N")
    quota.add_argument(
        "--max-priority",
        type=priority_ceiling_value,
        default=argparse.SUPPRESS,
        metavar="P",
        help="the highest job priority (0..9) the tenant may use, or 'default' for IMAGEN_DEFAULT_MAX_PRIORITY",
    )
    quota.set_defaults(func=cmd_tenants_set_quota)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
