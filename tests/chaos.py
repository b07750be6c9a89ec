"""Chaos runs: the whole system under load from several tenants while faults hit it, one after another.

Shared by ``bench/chaos.py`` (long outages, about 100 jobs in flight) and ``tests/workers/test_chaos.py``
(short ones, about 20). Each phase submits jobs through two API processes, injects one fault while they
run, lifts it, waits (bounded) until every job of the phase has ended and every webhook event of its jobs
has reached the receiver, then counts what a user would notice:

- lost: a job that got a 202 but has no row, or is not queued/running-free by the deadline;
- stage runs duplicated: the same stage of a job run to completion twice. Every completion is logged by
  the worker (``job <id>: <stage> done in``); stages are idempotent, so a second completion only ever
  comes from two workers running one stage at once (a redelivery racing a resend, two generations at once);
- artifacts duplicated: the bucket keeps every version of an object (versioning is on), so an object
  written twice at the same key has two versions; a key that no succeeded stage accounts for is an extra;
- HTTP: every answer the clients saw, a 503 (an outage, with Retry-After) apart from any other 5xx;
  refused or cut connections are counted apart too (the client then tries the other API);
- webhooks: every outbox event of the phase's jobs (and the events their final state implies) against
  the ``webhook-id`` s the receiver recorded: missing ones fail the phase, duplicates are allowed ("at
  least once") and reported.

Nothing here imports pytest: the benchmark runs it as a script.
"""

import contextlib
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
from minio import Minio
from minio.commonconfig import ENABLED
from minio.versioningconfig import VersioningConfig
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cli.services import free_port
from tests.servers import ChildProcess, System, wait_until

TERMINAL = ("succeeded", "failed", "canceled")
BUCKET = "imagen-test"
# The roles System itself starts and stops, and its attribute for each.
_SYSTEM_ROLES = {
    "api": "api",
    "worker": "worker",
    "control-worker": "control_worker",
    "webhook-worker": "webhook_worker",
    "beat": "beat",
}
_DONE_LINE = re.compile(r"job ([0-9a-f-]{36}): (\w+) done in")


def webhook_schedule(outage_s: float) -> list[float]:
    """A retry schedule (doubling from 0.5 s, each step at most 30 s) whose total outlasts ``outage_s``
    by half again, jitter (-20%) included: an event first tried at the start of the outage still arrives."""
    schedule: list[float] = []
    step = 0.5
    while 0.8 * sum(schedule) < 1.5 * outage_s:
        schedule.append(step)
        step = min(step * 2, 30.0)
    return schedule


@dataclass
class ChaosConfig:
    """How big a run is: jobs per phase, how many at once, and how long each outage lasts."""

    jobs: int = 100  # submitted per phase
    in_flight: int = 100  # at most this many submitted and not yet seen ended
    submit_span_s: float = 12.0  # submissions of a phase are spread over this long
    tenants: int = 4
    model_workers: int = 2
    worker_kills: int = 3
    worker_kill_interval_s: float = 3.0  # from a new worker's being ready to the next kill
    redis_down_s: float = 5.0
    postgres_down_s: float = 15.0
    store_down_s: float = 30.0
    webhook_down_s: float = 60.0
    fault_after_s: float = 4.0  # into a phase, once jobs are running
    recover_timeout_s: float = 300.0  # after the fault is lifted
    # A job that shows no sign of life this long is sent again (the test setup's 3 s would resend every job
    # waiting behind a hundred others every few seconds; production waits 600 s).
    stranded_after_s: float = 30.0
    hi_res_every: int = 5  # every n-th job also runs the 256 px stage (a longer stage to kill mid-run)
    faults: tuple[str, ...] = (
        "worker-kill",
        "redis-restart",
        "postgres-stop",
        "store-down",
        "webhook-down",
        "api-kill",
    )

    def env(self) -> dict[str, str]:
        """The settings the system runs with: a webhook retry schedule that outlasts the receiver's outage."""
        return {
            "IMAGEN_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(webhook_schedule(self.webhook_down_s)),
            "IMAGEN_DEFAULT_MAX_JOBS_IN_FLIGHT": str(max(self.in_flight, 100)),
            "IMAGEN_STRANDED_AFTER_S": str(self.stranded_after_s),
            # Model workers share the cores: one torch thread each when there are two.
            "IMAGEN_TORCH_THREADS": "1" if self.model_workers > 1 else "2",
        }


# --- the webhook receiver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    type: str
    job_id: str
    stage: str | None


class WebhookReceiver:
    """An HTTP server on loopback that records every delivery's ``webhook-id``; ``down()`` closes its port
    (deliveries are refused, as when the receiver is offline) and ``up()`` opens it again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    payload = json.loads(body)
                    delivery = Delivery(
                        self.headers["webhook-id"], payload["type"], payload["data"]["id"], payload.get("stage")
                    )
                except (ValueError, KeyError, TypeError):
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.deliveries.append(delivery)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="webhook-receiver").start()

    def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def received(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)


# --- clients -------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase submitted and what its clients saw."""

    fault: str
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> tenant
    http: Counter[str] = field(default_factory=Counter)  # "2xx", "4xx", "503", "5xx", "conn"
    http_5xx_samples: list[str] = field(default_factory=list)
    gave_up: int = 0  # submissions that never got a 202 by their deadline
    started_at: float = field(default_factory=time.monotonic)
    lifted_at: float | None = None
    recovered_at: float | None = None
    ended: set[str] = field(default_factory=set)  # jobs the clients saw end
    crashes: list[str] = field(default_factory=list)  # processes that exited by themselves
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, outcome: str, sample: str = "") -> None:
        with self._lock:
            self.http[outcome] += 1
            if outcome == "5xx" and len(self.http_5xx_samples) < 5:
                self.http_5xx_samples.append(sample)


class TenantClient:
    """One tenant's client: tries its preferred API, falls back to the other on a refused or cut connection,
    waits out a 503 as its Retry-After asks (capped), and retries a submission under its Idempotency-Key."""

    def __init__(self, name: str, key: str, api_urls: list[str], preferred: int) -> None:
        self.name = name
        self.api_urls = api_urls
        self.preferred = preferred
        self._headers = {"Authorization": f"Bearer {key}"}
        self._local = threading.local()
        # Every thread's client, kept so that each is closed by ``close`` (not left to the garbage collector
        # with its sockets open when its thread ends).
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    def _http(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(headers=self._headers, timeout=15)
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        """Close every thread's client."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def request(
        self,
        phase: Phase,
        method: str,
        path: str,
        *,
        deadline: float,
        stop: threading.Event | None = None,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """The first answer that is not a 5xx or a connection failure, or None by ``deadline`` (or ``stop``)."""
        api = self.preferred
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            url = self.api_urls[api % len(self.api_urls)] + path
            try:
                response = self._http().request(method, url, **kwargs)
            except httpx.TransportError:
                phase.count("conn")
                api += 1  # the other API
                time.sleep(0.2)
                continue
            if response.status_code == 503:
                phase.count("503")
                time.sleep(min(float(response.headers.get("retry-after") or 1), 1.0) * random.uniform(0.5, 1.0))
                continue
            if response.status_code >= 500:
                phase.count("5xx", f"{method} {path}: {response.status_code} {response.text[:200]}")
                time.sleep(0.5)
                continue
            phase.count("2xx" if response.status_code < 300 else "4xx")
            if response.status_code == 429:
                time.sleep(0.5)
                continue
            return response
        return None

    def submit(
        self, phase: Phase, body: dict[str, Any], *, deadline: float, stop: threading.Event | None = None
    ) -> str | None:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        response = self.request(phase, "POST", "/v1/jobs", json=body, headers=headers, deadline=deadline, stop=stop)
        if response is None or response.status_code != 202:
            return None
        return str(response.json()["id"])

    def status(self, phase: Phase, job_id: str, *, deadline: float, stop: threading.Event | None = None) -> str | None:
        response = self.request(phase, "GET", f"/v1/jobs/{job_id}", deadline=deadline, stop=stop)
        return str(response.json()["status"]) if response is not None and response.status_code == 200 else None


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class PhaseReport:
    """One fault's figures; ``misses`` lists the targets it did not meet."""

    fault: str
    submitted: int
    succeeded: int
    failed: int
    lost: int
    gave_up: int
    stage_runs_duplicated: int
    artifacts_duplicated: int
    artifacts_missing: int
    http_5xx: int
    http_503: int
    conn_errors: int
    webhooks_missing: int
    webhooks_duplicated: int
    recover_s: float | None
    crashes: int = 0
    details: list[str] = field(default_factory=list)

    def misses(self) -> list[str]:
        targets = {
            "jobs lost": self.lost,
            "artifacts duplicated": self.artifacts_duplicated,
            "artifacts missing": self.artifacts_missing,
            "client-visible 5xx other than 503": self.http_5xx,
            "webhook events missing": self.webhooks_missing,
        }
        missed = [f"{name}: {value}" for name, value in targets.items() if value]
        if self.recover_s is None:
            missed.append("did not recover in time")
        return missed


_COLUMNS = [
    ("fault", "fault", 22),
    ("submitted", "sub", 4),
    ("succeeded", "ok", 4),
    ("failed", "fail", 4),
    ("lost", "lost", 4),
    ("gave_up", "gaveup", 6),
    ("stage_runs_duplicated", "dup-run", 7),
    ("artifacts_duplicated", "dup-art", 7),
    ("artifacts_missing", "miss-art", 8),
    ("http_5xx", "5xx", 4),
    ("http_503", "503", 5),
    ("conn_errors", "conn", 5),
    ("webhooks_missing", "wh-miss", 7),
    ("webhooks_duplicated", "wh-dup", 6),
    ("crashes", "crash", 5),
    ("recover_s", "recover", 7),
]


def format_table(reports: list[PhaseReport]) -> str:
    """The reports as a text table, one row per fault, and PASS/MISS per row."""

    def cell(report: PhaseReport, attribute: str) -> str:
        value = getattr(report, attribute)
        if attribute == "recover_s":
            return "-" if value is None else f"{value:.1f}s"
        return str(value)

    header = "  ".join(title.rjust(width) if i else title.ljust(width) for i, (_, title, width) in enumerate(_COLUMNS))
    lines = [header + "  target", "-" * (len(header) + 8)]
    for report in reports:
        cells = [
            cell(report, attr).rjust(width) if i else cell(report, attr).ljust(width)
            for i, (attr, _, width) in enumerate(_COLUMNS)
        ]
        misses = report.misses()
        lines.append("  ".join(cells) + "  " + ("PASS" if not misses else "MISS: " + "; ".join(misses)))
    return "\n".join(lines)


class ChaosRun:
    """The system, the receiver, the tenants' clients and the phases run so far."""

    def __init__(self, config: ChaosConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.log = log
        self.system = System(env_overrides=config.env())
        self.receiver = WebhookReceiver()
        self.second_api_port = free_port()
        # Every process of the system by role, restarted by ``_supervise`` when it exits, as ``imagen-queue
        # up`` and compose's restart policy do: a crash costs a restart, and it is reported.
        self.processes: dict[str, ChildProcess] = {}
        self.clients: list[TenantClient] = []
        self.reports: list[PhaseReport] = []
        self._engine: Engine | None = None
        self._restarts = 0
        self._killing: set[str] = set()  # roles a fault is killing on purpose
        self._phase: Phase | None = None
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None

    # -- start and stop --

    def start(self) -> None:
        system = self.system
        system.start_stores()
        from db.migrate import upgrade

        upgrade(system.env["IMAGEN_DATABASE_URL"])
        self._engine = create_engine(system.env["IMAGEN_DATABASE_URL"], pool_pre_ping=True)
        self._versioned_bucket()
        self._build_models()
        system.start_processes()
        assert system.api and system.worker and system.control_worker and system.webhook_worker and system.beat
        self.processes = {
            "api": system.api,
            "worker": system.worker,
            "control-worker": system.control_worker,
            "webhook-worker": system.webhook_worker,
            "beat": system.beat,
        }
        for i in range(1, self.config.model_workers):
            self.processes[f"worker-{chr(ord('a') + i)}"] = system.new_worker(f"worker-{chr(ord('a') + i)}")
        self.processes["api-2"] = system.new_api("api-2", self.second_api_port)
        api_urls = [system.api_url, f"http://127.0.0.1:{self.second_api_port}"]
        wait_until(lambda: self._ready(api_urls[1]), 60, "the second API to be ready")
        self.receiver.up()
        self.clients = [
            TenantClient(f"chaos-{i}", self._new_key(f"chaos-{i}-{uuid.uuid4().hex[:6]}"), api_urls, preferred=i % 2)
            for i in range(self.config.tenants)
        ]
        wait_until(self._workers_ready, 120, "the model workers to be ready", interval_s=0.5)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="supervisor")
        self._supervisor.start()

    @property
    def model_workers(self) -> list[ChildProcess]:
        return [child for role, child in self.processes.items() if role.startswith("worker")]

    def _supervise(self) -> None:
        """Start a process again a second after it exits, and note the exits no fault asked for."""
        while not self._supervising.wait(0.5):
            for role, child in list(self.processes.items()):
                if child.alive() or self._supervising.is_set():
                    continue
                assert child.process is not None
                code = child.process.returncode
                if role not in self._killing:
                    self.log(f"  {child.name} exited by itself (code {code}): restarting it")
                    if self._phase is not None:
                        self._phase.crashes.append(f"{child.name} exited with {code}")
                time.sleep(1.0)
                self._restarts += 1
                replacement = ChildProcess(f"{role}-r{self._restarts}", child.args, child.env, self.system.logs)
                self.processes[role] = replacement.start()
                self._killing.discard(role)
                if role in _SYSTEM_ROLES:  # so that System.stop() stops the replacement
                    setattr(self.system, _SYSTEM_ROLES[role], replacement)

    def _kill(self, role: str) -> ChildProcess:
        """SIGKILL a process on purpose; returns its replacement once the supervisor started it."""
        victim = self.processes[role]
        self._killing.add(role)
        victim.kill()
        return wait_until(lambda: self.processes[role] is not victim and self.processes[role], 30, f"{role} back")

    def stop(self) -> None:
        """Stop everything this run started; safe to call twice and after a failed start."""
        self._supervising.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        for role, child in self.processes.items():
            if role not in _SYSTEM_ROLES:
                with contextlib.suppress(Exception):
                    child.stop()
        self.receiver.down()
        for client in self.clients:
            client.close()
        if self._engine is not None:
            self._engine.dispose()
        self.system.stop()

    def _build_models(self) -> None:
        """The tiny preset, built once into the folder every worker reads (as the test session does)."""
        import subprocess
        import sys

        from tests.servers import REPO

        code = (
            "from core.config import get_settings; from core.presets import get_preset;"
            "from workers.preset_files import build_preset; s = get_settings();"
            "build_preset(get_preset(s.model_preset), s.resolved_models_dir)"
        )
        subprocess.run([sys.executable, "-c", code], env=self.system.env, cwd=REPO, check=True)

    def _versioned_bucket(self) -> None:
        s3 = self._s3()
        if not s3.bucket_exists(BUCKET):
            s3.make_bucket(BUCKET)
        s3.set_bucket_versioning(BUCKET, VersioningConfig(ENABLED))

    def _s3(self) -> Minio:
        return Minio(self.system.s3.endpoint, access_key="test-access", secret_key="test-secret", secure=False)

    def _new_key(self, tenant: str) -> str:
        from db import tenants

        assert self._engine is not None
        with Session(self._engine) as session, session.begin():
            row = tenants.get_or_create_tenant(session, name=tenant)
            _, key = tenants.create_api_key(session, tenant=row)
        return key

    @staticmethod
    def _ready(url: str) -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def _workers_ready(self) -> bool:
        return all(_worker_ready(worker) for worker in self.model_workers)

    # -- load --

    def _job_body(self, client: TenantClient, n: int) -> dict[str, Any]:
        hi_res = self.config.hi_res_every > 0 and n % self.config.hi_res_every == 0
        return {
            "kind": "generate",
            "input": {
                "prompt": f"a corgi wearing a crown, take {n}",
                "seed": n,
                "resolution": 256 if hi_res else 64,
                "stages": {"base": {"steps": 4}, "sr256": {"steps": 2}},
            },
            "webhook": {"url": f"{self.receiver.url}/{client.name}"},
            "metadata": {"chaos": "1"},
        }

    @contextlib.contextmanager
    def _load(self, phase: Phase) -> Iterator[threading.Event]:
        """Submit the phase's jobs (spread over ``submit_span_s``, at most ``in_flight`` unfinished at once)
        and poll them as clients would, until the returned event is set."""
        stop = threading.Event()
        config = self.config
        outstanding: dict[str, TenantClient] = {}
        lock = threading.Lock()
        counter = iter(range(config.jobs))
        interval = config.submit_span_s / max(config.jobs, 1) * len(self.clients)

        def submitter(client: TenantClient) -> None:
            while not stop.is_set():
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                while len(outstanding) >= config.in_flight and not stop.is_set():
                    time.sleep(0.2)
                deadline = time.monotonic() + config.recover_timeout_s
                job_id = client.submit(phase, self._job_body(client, n), deadline=deadline, stop=stop)
                if job_id is None:
                    phase.gave_up += 1
                    continue
                with lock:
                    phase.accepted[job_id] = client.name
                    outstanding[job_id] = client
                stop.wait(interval)

        def poller() -> None:
            # Clients look at each unfinished job about every 3 s.
            while not stop.is_set():
                with lock:
                    jobs = list(outstanding.items())
                for job_id, client in jobs:
                    if stop.is_set():
                        return
                    status = client.status(phase, job_id, deadline=time.monotonic() + 5, stop=stop)
                    if status in TERMINAL:
                        with lock:
                            outstanding.pop(job_id, None)
                            phase.ended.add(job_id)
                    stop.wait(3.0 / max(len(jobs), 1))
                stop.wait(0.5)

        threads = [threading.Thread(target=submitter, args=(c,), daemon=True) for c in self.clients]
        threads.append(threading.Thread(target=poller, daemon=True))
        self._submitters = threads[:-1]
        for thread in threads:
            thread.start()
        try:
            yield stop
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

    def submissions_done(self) -> bool:
        return not any(thread.is_alive() for thread in self._submitters)

    # -- faults --

    def _sleep_phase(self, seconds: float) -> None:
        time.sleep(seconds)

    def kill_model_worker(self) -> None:
        """SIGKILL the first model worker mid-stage, and start a new one a second later, as a supervisor
        would; ``worker_kills`` times."""
        for i in range(self.config.worker_kills):
            victim = self.processes["worker"]
            replacement = self._kill("worker")
            self.log(f"  killed {victim.name} (SIGKILL, {i + 1}/{self.config.worker_kills})")
            if i + 1 < self.config.worker_kills:
                # The next kill finds it busy: ready, then a few seconds into the queue's stages.
                wait_until(partial(_worker_ready, replacement), 90, "the new worker to be ready", interval_s=0.5)
                time.sleep(self.config.worker_kill_interval_s)

    def restart_redis(self) -> None:
        """Redis stops, keeps nothing (no persistence here) and comes back empty on the same port."""
        self.system.redis.stop()
        self.log(f"  Redis stopped for {self.config.redis_down_s:.0f} s")
        time.sleep(self.config.redis_down_s)
        self.system.redis.start()

    def stop_postgres(self) -> None:
        postgres = self.system.postgres
        postgres.stop()
        self.log(f"  Postgres stopped for {self.config.postgres_down_s:.0f} s")
        try:
            time.sleep(self.config.postgres_down_s)
        finally:
            postgres.ensure_postgres_running()

    def store_down(self) -> None:
        self.system.s3_proxy.down()
        self.log(f"  object store unreachable for {self.config.store_down_s:.0f} s")
        try:
            time.sleep(self.config.store_down_s)
        finally:
            self.system.s3_proxy.up()

    def webhook_receiver_down(self) -> None:
        self.receiver.down()
        self.log(f"  webhook receiver down for {self.config.webhook_down_s:.0f} s")
        try:
            time.sleep(self.config.webhook_down_s)
        finally:
            self.receiver.up()

    def kill_api(self) -> None:
        """SIGKILL the first API process while clients submit; it comes back a few seconds later."""
        self._kill("api")
        self.log("  killed the first API process (SIGKILL); clients fall back to the second")
        wait_until(lambda: self._ready(self.system.api_url), 60, "the first API to come back")

    FAULTS: ClassVar[dict[str, tuple[str, str]]] = {
        "worker-kill": ("kill_model_worker", "model worker SIGKILL"),
        "redis-restart": ("restart_redis", "Redis restarted empty"),
        "postgres-stop": ("stop_postgres", "Postgres stopped"),
        "store-down": ("store_down", "object store down"),
        "webhook-down": ("webhook_receiver_down", "webhook receiver down"),
        "api-kill": ("kill_api", "API SIGKILL (1 of 2)"),
    }

    def run_phase(self, fault: str) -> PhaseReport:
        """Load, inject ``fault``, lift it, wait for recovery (bounded), and count."""
        method, title = self.FAULTS[fault]
        if fault == "worker-kill":
            title += f" x{self.config.worker_kills}"
        phase = Phase(title)
        self._phase = phase
        self.log(f"phase: {title}")
        with self._load(phase):
            time.sleep(self.config.fault_after_s)
            getattr(self, method)()
            phase.lifted_at = time.monotonic()
            deadline = phase.lifted_at + self.config.recover_timeout_s
            while time.monotonic() < deadline:
                if self.submissions_done() and self._recovered(phase):
                    phase.recovered_at = time.monotonic()
                    break
                time.sleep(1.0)
        report = self.report(phase)
        self.reports.append(report)
        for line in report.details:
            self.log("  " + line)
        return report

    # -- accounting --

    def _rows(self, phase: Phase) -> tuple[dict[str, str], list[tuple[str, str, str, str | None]]]:
        """(job id -> status) and the outbox events (id, job id, status, type) of the phase's jobs."""
        ids = list(phase.accepted)
        assert self._engine is not None
        with self._engine.connect() as connection:
            query = text("SELECT id::text, status::text FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))")
            jobs: dict[str, str] = {job_id: status for job_id, status in connection.execute(query, {"ids": ids})}
            events = [
                (event_id, job_id, status, type_)
                for event_id, job_id, status, type_ in connection.execute(
                    text(
                        "SELECT id::text, job_id::text, status, type FROM webhook_events"
                        " WHERE job_id = ANY(CAST(:ids AS uuid[]))"
                    ),
                    {"ids": ids},
                ).all()
            ]
        return jobs, events

    def _recovered(self, phase: Phase) -> bool:
        """Every accepted job ended, and every outbox event of theirs reached the receiver."""
        try:
            jobs, events = self._rows(phase)
        except SQLAlchemyError:
            return False
        if len(jobs) < len(phase.accepted) or any(status not in TERMINAL for status in jobs.values()):
            return False
        received = {d.webhook_id for d in self.receiver.received()}
        return all(_webhook_id(event_id) in received for event_id, *_ in events)

    def report(self, phase: Phase) -> PhaseReport:
        jobs, events = self._rows(phase)
        details: list[str] = []
        statuses = Counter(jobs.get(job_id, "missing") for job_id in phase.accepted)
        lost_ids = [job_id for job_id in phase.accepted if jobs.get(job_id) not in TERMINAL]
        if lost_ids:
            described = [f"{job_id} ({jobs.get(job_id, 'no row')})" for job_id in lost_ids[:5]]
            details.append(f"lost jobs: {', '.join(described)}")
        if statuses["failed"]:
            details.append(f"failed jobs: {self._errors(phase, 'failed')}")
        runs = self.stage_completions(set(phase.accepted))
        duplicated_runs = sum(n - 1 for n in runs.values() if n > 1)
        if duplicated_runs:
            details.append(f"stages completed twice: {[k for k, n in runs.items() if n > 1][:5]}")
        ended = {job_id for job_id, status in jobs.items() if status in TERMINAL}
        duplicated, extra, missing = self._artifact_counts(phase, ended)
        if duplicated or extra or missing:
            details.append(f"artifacts: written twice {duplicated[:3]}, extra {extra[:3]}, missing {missing[:3]}")
        received = self.receiver.received()
        by_id = Counter(d.webhook_id for d in received)
        outbox_ids = {_webhook_id(event_id) for event_id, *_ in events}
        missing_ids = outbox_ids - set(by_id)
        implied_missing = self._implied_events_missing(phase, jobs, events)
        if missing_ids:
            undelivered = Counter(status for event_id, _, status, _ in events if _webhook_id(event_id) in missing_ids)
            details.append(f"webhook events not received: {len(missing_ids)} (outbox status {dict(undelivered)})")
        if implied_missing:
            details.append(f"events the jobs' ends imply but the outbox lacks: {implied_missing[:5]}")
        if phase.crashes:
            details.append(f"processes that exited by themselves (restarted): {phase.crashes}")
        if phase.http_5xx_samples:
            details.append(f"5xx answers: {phase.http_5xx_samples}")
        return PhaseReport(
            fault=phase.fault,
            submitted=len(phase.accepted),
            succeeded=statuses["succeeded"],
            failed=statuses["failed"] + statuses["canceled"],
            lost=len(lost_ids),
            gave_up=phase.gave_up,
            stage_runs_duplicated=duplicated_runs,
            artifacts_duplicated=len(duplicated) + len(extra),
            artifacts_missing=len(missing),
            http_5xx=phase.http["5xx"],
            http_503=phase.http["503"],
            conn_errors=phase.http["conn"],
            webhooks_missing=len(missing_ids) + len(implied_missing),
            webhooks_duplicated=sum(n - 1 for webhook_id, n in by_id.items() if webhook_id in outbox_ids and n > 1),
            recover_s=None if phase.recovered_at is None else phase.recovered_at - (phase.lifted_at or 0),
            crashes=len(phase.crashes),
            details=details,
        )

    def _errors(self, phase: Phase, status: str) -> list[str]:
        assert self._engine is not None
        with self._engine.connect() as connection:
            rows = connection.execute(
                text("SELECT error FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) AND status::text = :status LIMIT 3"),
                {"ids": list(phase.accepted), "status": status},
            ).all()
        return [row[0] for row in rows]

    def stage_completions(self, job_ids: set[str]) -> Counter[tuple[str, str]]:
        """How many times each (job, stage) was run to completion, from every worker's log."""
        runs: Counter[tuple[str, str]] = Counter()
        for path in self.system.logs.glob("*.log"):
            for match in _DONE_LINE.finditer(path.read_text(errors="replace")):
                if match.group(1) in job_ids:
                    runs[(match.group(1), match.group(2))] += 1
        return runs

    def _artifact_counts(self, phase: Phase, ended: set[str]) -> tuple[list[str], list[str], list[str]]:
        """Keys written more than once, and, of the jobs that ended (a running stage may have written what it
        has not recorded yet), keys no succeeded stage accounts for and expected keys absent."""
        assert self._engine is not None
        with self._engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT s.job_id::text, s.name, s.outputs FROM job_stages s"
                    " WHERE s.job_id = ANY(CAST(:ids AS uuid[])) AND s.status::text = 'succeeded'"
                ),
                {"ids": list(phase.accepted)},
            ).all()
        expected = {output["key"] for _, _, outputs in rows for output in outputs if "key" in output}
        versions: Counter[str] = Counter()
        s3 = self._s3()
        for job_id in phase.accepted:
            for item in s3.list_objects(BUCKET, prefix=f"jobs/{job_id}/", recursive=True, include_version=True):
                if not item.is_delete_marker:
                    versions[str(item.object_name)] += 1
        duplicated = sorted(key for key, n in versions.items() if n > 1)
        extra = sorted(key for key in set(versions) - expected if key.split("/")[1] in ended)
        missing = sorted(expected - set(versions))
        return duplicated, extra, missing

    def _implied_events_missing(
        self, phase: Phase, jobs: dict[str, str], events: list[tuple[str, str, str, str | None]]
    ) -> list[str]:
        """Each ended job owes its receiver its final event: one the outbox does not hold is missing."""
        types = {(job_id, type_) for _, job_id, _, type_ in events}
        return [
            f"{job_id} job.{status}"
            for job_id, status in jobs.items()
            if status in TERMINAL and (job_id, f"job.{status}") not in types
        ]


def _worker_ready(worker: ChildProcess) -> bool:
    """Celery's own line, not any line with the word in it ("tiny models already built")."""
    return re.search(r"celery\.apps\.worker: \S+ ready\.", worker.log_tail(400)) is not None


def _webhook_id(event_id: str) -> str:
    return "msg_" + uuid.UUID(event_id).hex
