"""Where a running (or stopped) embedded system is: ``<data dir>/connection.json``, written by ``up``.

Admin commands and client commands read it when the environment does not say where the database and
the API are, so that ``IMAGEN_DATA_DIR`` alone finds the system ``imagen-queue up`` runs.
"""

import json
import os
from pathlib import Path
from typing import Any

from core.config import Settings, get_settings

CONNECTION_FILE = "connection.json"
ADMIN_KEY_FILE = "admin_api_key"
# Keeps a Postgres handle alive for the life of a command that started or joined the embedded cluster.
_postgres: list[Any] = []


def connection_path(data_dir: Path) -> Path:
    return data_dir / CONNECTION_FILE


def write_connection(data_dir: Path, values: dict[str, Any]) -> Path:
    """Record how to reach the system (it holds credentials: readable by its owner only)."""
    path = connection_path(data_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f, indent=2)
        f.write("\n")
    os.chmod(path, 0o600)  # a file left from before keeps its mode through O_CREAT
    return path


def read_connection(data_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(connection_path(data_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class SystemNotFound(Exception):
    """Neither the environment nor the data dir says where the database is."""


def use_embedded_database() -> None:
    """Point this process at the embedded system's database unless ``IMAGEN_DATABASE_URL`` is set.

    The embedded cluster is joined if ``up`` runs it, else started for this command alone (it stops
    when the command ends; ``up`` keeps it running when it holds it too).
    """
    if os.environ.get("IMAGEN_DATABASE_URL"):
        return
    data_dir = Settings().data_dir
    info = read_connection(data_dir) or {}
    from cli.services import postgres_data_dir

    pgdata = Path(info.get("postgres_data_dir") or postgres_data_dir(data_dir))
    if not (pgdata / "PG_VERSION").exists():
        if info.get("database_url"):
            os.environ["IMAGEN_DATABASE_URL"] = info["database_url"]
            get_settings.cache_clear()
            return
        raise SystemNotFound(
            f"no database: IMAGEN_DATABASE_URL is not set and {data_dir} holds no embedded system"
            " (run `imagen-queue up` once, or set IMAGEN_DATA_DIR to the data dir it uses)"
        )
    try:
        from cli.services import start_postgres
    except ImportError:  # pragma: no cover - the embedded extra is not installed
        raise SystemNotFound("the embedded Postgres is not installed here: run `imagen-queue up`") from None
    try:
        server, url = start_postgres(pgdata)
    except Exception as exc:
        raise SystemNotFound(
            f"could not start the embedded Postgres in {pgdata} ({exc}): run `imagen-queue up`"
        ) from exc
    _postgres.append(server)
    os.environ["IMAGEN_DATABASE_URL"] = url
    for name, env in (("redis_url", "IMAGEN_REDIS_URL"),):
        if info.get(name) and not os.environ.get(env):
            os.environ[env] = info[name]
    get_settings.cache_clear()


def default_api_url(given: str | None) -> str:
    """--api-url, else IMAGEN_API_URL, IMAGEN_PUBLIC_URL, the embedded system's address, the default."""
    for value in (given, os.environ.get("IMAGEN_API_URL"), os.environ.get("IMAGEN_PUBLIC_URL")):
        if value:
            return value
    info = read_connection(Settings().data_dir)
    if info and info.get("api_url"):
        return str(info["api_url"])
    return get_settings().public_url


def default_api_key(given: str | None) -> str | None:
    """--api-key, else IMAGEN_API_KEY, IMAGEN_ADMIN_API_KEY, the embedded system's admin key."""
    key = given or os.environ.get("IMAGEN_API_KEY") or os.environ.get("IMAGEN_ADMIN_API_KEY")
    if key:
        return key
    path = Settings().data_dir / ADMIN_KEY_FILE
    return path.read_text().strip() if path.exists() else None
