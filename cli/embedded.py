"""``imagen-queue up``: the whole system on one machine, no Docker and no external services.

Postgres (with pgvector) and Redis run from wheels, objects live in a folder, and the API, a model worker,
a control worker (finalize, sweeps), a webhook worker and the beat scheduler (the sweeper) run as child
processes. State lives under
``IMAGEN_DATA_DIR`` and survives restarts.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from cli.connection import ADMIN_KEY_FILE, write_connection
from cli.supervisor import Supervisor
from core.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def admin_key_path(settings: Settings) -> Path:
    return settings.data_dir / ADMIN_KEY_FILE


def _ensure_admin_key(settings: Settings, env: dict[str, str]) -> tuple[str | None, bool]:
    """The admin key: IMAGEN_ADMIN_API_KEY, else one created on first start (kept, 0600, in the data dir)."""
    from db import tenants
    from db.session import session_scope

    path = admin_key_path(settings)
    with session_scope() as session:
        tenant = tenants.get_or_create_tenant(session, name="default")
        if settings.admin_api_key:
            register_admin_key(session, settings.admin_api_key)
            return settings.admin_api_key, False
        if path.exists():
            return path.read_text().strip(), False
        if tenants.has_admin_key(session):
            return None, False
        _, key = tenants.create_api_key(session, tenant=tenant, is_admin=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def register_admin_key(session: "Session", key: str) -> bool:
    """Record ``key`` (IMAGEN_ADMIN_API_KEY) as an admin key of the default tenant unless it is live already;
    whether it was added. `up` calls it on every start, and so does `migrate` (compose's one-shot service)."""
    from db import tenants

    if tenants.find_api_key(session, key=key) is not None:
        return False
    tenant = tenants.get_or_create_tenant(session, name="default")
    tenants.create_api_key(session, tenant=tenant, is_admin=True, key=key)
    return True


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise RuntimeError(f"{' '.join(map(str, child.args))} exited with {child.returncode}")  # type: ignore[arg-type]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API at {url} was not ready within {timeout_s} s")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def default_model_preset(models_dir: Path) -> str:
    """The preset `up` runs when IMAGEN_MODEL_PRESET is unset: deepfloyd-if on a CUDA machine that has its
    weights, else toy (trained small models that run on a CPU)."""
    import torch

    from core.preset_files import is_available
    from core.presets import get_preset

    # Safe in this parent: the workers are started with exec, never forked from it.
    if torch.cuda.is_available() and is_available(get_preset("deepfloyd-if"), models_dir):
        return "deepfloyd-if"
    return "toy"


def _prepare_models(base: Settings) -> str:
    """Pick the model preset and build it if it is a local one; its name."""
    from core.presets import get_preset
    from workers.preset_files import build_preset

    name = os.environ.get("IMAGEN_MODEL_PRESET") or default_model_preset(base.resolved_models_dir)
    build_preset(get_preset(name), base.resolved_models_dir)
    return name


# With --stage-workers: the cascade split in two model workers, so that stage II of one job runs while
# stage I of the next does (on one GPU each, in production; see docs/gpu-layout.md).
STAGE_WORKERS = {"worker-text-base": ("text", "base"), "worker-sr": ("sr", "caption", "embed")}


def run_embedded(host: str, port: int, *, stage_workers: bool = False) -> int:
    """Start everything, print the address and the admin key, and run until interrupted."""
    from cli.services import RedisServer, postgres_data_dir, start_postgres
    from core.preset_files import ModelsNotFoundError
    from core.routing import CONTROL_QUEUES, MODEL_QUEUES, WEBHOOK_QUEUES

    base = Settings()
    data_dir = base.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    # Before any server starts: a preset that cannot be built stops `up` with nothing to clean up.
    try:
        preset = _prepare_models(base)
    except (ModelsNotFoundError, ValueError) as exc:
        print(f"imagen-queue up: {exc}", file=sys.stderr, flush=True)
        return 1

    pgdata = postgres_data_dir(data_dir)
    _pg, database_url = start_postgres(pgdata)
    redis_server = RedisServer(data_dir / "redis")
    redis_server.start()
    public_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    env = dict(os.environ)
    env.update(
        {
            "IMAGEN_DATA_DIR": str(data_dir),
            "IMAGEN_DATABASE_URL": database_url,
            "IMAGEN_REDIS_URL": redis_server.url,
            "IMAGEN_PUBLIC_URL": public_url,
            "IMAGEN_MODEL_PRESET": preset,
            "HF_HUB_OFFLINE": "1",
        }
    )
    os.environ.update(env)
    from core.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()

    from db.migrate import upgrade

    upgrade(database_url)
    key, created = _ensure_admin_key(settings, env)
    # Admin and client commands find this system from IMAGEN_DATA_DIR alone (cli.connection).
    write_connection(
        data_dir,
        {
            "database_url": database_url,
            "postgres_data_dir": str(pgdata),
            "redis_url": redis_server.url,
            "api_url": public_url,
            "s3": {
                "endpoint": settings.s3_endpoint,
                "bucket": settings.s3_bucket,
                "secure": settings.s3_secure,
                "access_key": settings.s3_access_key,
                "secret_key": settings.s3_secret_key,
            }
            if settings.s3_endpoint
            else None,
            "objects_dir": None if settings.s3_endpoint else str(settings.objects_dir),
            "pid": os.getpid(),
        },
    )

    supervisor = Supervisor(env, logs)
    supervisor.start("api", ["api", "--host", host, "--port", str(port)])
    # One model worker (as on one GPU) or two (--stage-workers), one for control tasks, and one for webhook
    # deliveries: a slow receiver holds up neither a model stage nor any job's completion. Distinct node
    # names: two workers called celery@host would answer the broker as one.
    if stage_workers:
        # Each worker holds only its stages' models. On a CPU they share its cores, half each.
        threads = (
            {} if "IMAGEN_TORCH_THREADS" in env else {"IMAGEN_TORCH_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}
        )
        for name, queues in STAGE_WORKERS.items():
            model = ["--pool", "solo", "--queues", ",".join(queues)]
            supervisor.start(name, ["worker", *model, "--hostname", f"{name}@%h"], env=threads)
    else:
        model = ["--pool", "solo", "--queues", ",".join(MODEL_QUEUES)]
        supervisor.start("worker", ["worker", *model, "--hostname", "model@%h"])
    control = ["--pool", "threads", "--concurrency", "4", "--queues", ",".join(CONTROL_QUEUES)]
    supervisor.start("control-worker", ["worker", *control, "--hostname", "control@%h"])
    webhooks = ["--pool", "threads", "--concurrency", str(settings.webhook_concurrency)]
    webhooks += ["--queues", ",".join(WEBHOOK_QUEUES)]
    supervisor.start("webhook-worker", ["worker", *webhooks, "--hostname", "webhooks@%h"])
    supervisor.start("beat", ["beat"])

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _wait_ready(public_url, supervisor.processes())
        print(f"imagen-queue is up: API {public_url}  (docs {public_url}/docs)", flush=True)
        print(f"model preset: {preset}   data: {data_dir}   logs: {logs}", flush=True)
        if key and created:
            print(f"admin API key (shown once, also kept in {admin_key_path(settings)}): {key}", flush=True)
        elif key:
            print(f"admin API key: {key}", flush=True)
        while True:
            # A child that dies is started again (the job it was running is picked up by the sweeper).
            supervisor.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop()
        redis_server.stop()
