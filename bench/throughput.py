"""Benchmark: jobs/s with cross-job batching off and on, and with the stages split over two workers; what each
job costs the shared services (Postgres, Redis, the object store), and which of them saturates first.

Each scenario starts a fresh system from the test suite's helpers (Postgres, Redis, an S3 server behind a
counting proxy, the API, the control worker, and its model workers), warms the workers up, then submits
--jobs jobs of one image at once through the API and waits for all of them:

  a  batching off (IMAGEN_MAX_BATCH=1), one model worker on every model queue, 2 torch threads
  b  batching on (IMAGEN_MAX_BATCH=8, the default), the same worker
  c  batching on, two model workers: one on text,base and one on sr,caption,embed, 1 torch thread each

Every scenario has two torch threads in all on this 2-core machine. It prints jobs/s and images/s of each,
b/a and c/a (target b/a >= 1.4: PASS or MISS), each model worker's memory after the run, the batch sizes
each stage formed (from job_stages.batch_id/batch_size; "n/a" where the schema has no such columns), and
per job: Postgres statements and transactions, Redis commands and bytes, object-store requests and bytes,
all from counters the services keep (see bench/service_counters.py); Redis's net of what the idle system
does in the same time. It ends with the capacity table: each service's capacity measured here (pgbench,
redis-benchmark, a PUT/GET loop; bench/service_capacity.py) over the per-job costs, and what 100 and 1000
GPUs would ask of each at an assumed rate per GPU (docs/capacity.md explains how to read it).

Timings are production's, not the test suite's: the stage heartbeat every 15 s (IMAGEN_REQUEUE_AFTER_S
60), no sweeper (beat does not run), no webhooks (the jobs ask for none), no image downloads.

    python bench/throughput.py                       # toy preset, 32 jobs, a b c: about 10 minutes on 2 cores
    python bench/throughput.py --scenarios a,b --jobs 16
    python bench/throughput.py --quick               # smoke check: 4 jobs of 3 steps, scenario a, ~3 minutes

Exit status 1 if a job failed.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, not an installed copy

import httpx

from bench.service_capacity import PGBENCH_STATEMENTS_PER_XACT, Capacity
from bench.service_counters import CountingProxy, Figures, PostgresCounter, RedisCounter, delta
from core.limits import DEFAULT_MAX_BATCH
from core.presets import get_preset
from core.routing import CONTROL_QUEUES, MODEL_QUEUES
from tests.servers import ChildProcess, System, wait_until

TARGET_B_OVER_A = 1.4
PROMPTS = ("a corgi wearing a crown", "a lighthouse at dusk", "a bowl of ramen, studio light", "a red bicycle")
DATABASE = "imagen"
# A backend flushes its pg_stat_database counts up to 10 s after it goes idle; readings wait this long.
SETTLE_S = 11.0
# A task is acknowledged (in Redis) just after its job's row says it ended.
TAIL_S = 1.0
# Steps of each stage in --quick runs.
QUICK_STEPS = 3
# Placeholder, not a measurement: jobs/s one GPU finishes (see docs/capacity.md).
DEFAULT_GPU_JOBS_PER_S = 1.0
SERVICES = ("postgres", "redis", "s3")
# Services that idle workers keep busy at a steady rate (queue polls, heartbeats), which per-job figures leave
# out. Nothing touches Postgres or the store while the system idles: what they see now and then (autovacuum,
# a checkpoint) is no rate to subtract.
STEADY_BACKGROUND = ("redis",)


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    queues: tuple[str, ...]
    threads: int


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    max_batch: int
    workers: tuple[WorkerSpec, ...]

    @property
    def threads(self) -> str:
        return " + ".join(str(w.threads) for w in self.workers)


SCENARIOS = {
    "a": Scenario("a", "batching off, one all-queue worker", 1, (WorkerSpec("worker", MODEL_QUEUES, threads=2),)),
    "b": Scenario(
        "b", "batching on, one all-queue worker", DEFAULT_MAX_BATCH, (WorkerSpec("worker", MODEL_QUEUES, threads=2),)
    ),
    "c": Scenario(
        "c",
        "batching on, stage workers split",
        DEFAULT_MAX_BATCH,
        (
            WorkerSpec("worker-text-base", ("text", "base"), threads=1),
            WorkerSpec("worker-sr", ("sr", "caption", "embed"), threads=1),
        ),
    ),
}


@dataclass
class BatchRow:
    stage: str
    runs: int
    passes: int
    images: int  # images over all passes
    largest: int


@dataclass
class Outcome:
    scenario: Scenario
    jobs: int
    images: int
    failed: list[str]
    seconds: float  # first submission to the last job's finish
    window_s: float  # between the two readings of Redis
    idle_s: float
    gross: dict[str, Figures]
    idle: dict[str, Figures]
    memory: list[tuple[str, int, int]]  # process, VmRSS kB, VmHWM kB
    batches: list[BatchRow] | None
    celery_workers: int

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def per_job(self, service: str, name: str) -> float:
        """A counter's gain over the run per job, less (for Redis) the idle system's rate over the same time."""
        background = 0.0
        if service in STEADY_BACKGROUND:
            background = self.idle[service].get(name, 0.0) / self.idle_s * self.window_s
        return max(0.0, self.gross[service].get(name, 0.0) - background) / self.jobs

    def idle_rate(self, service: str, name: str) -> float:
        return self.idle[service].get(name, 0.0) / self.idle_s


@dataclass
class Options:
    preset: str
    jobs: int
    quick: bool
    idle_s: float
    keep: bool


class ScenarioRun:
    """One scenario on a system of its own: start, warm up, measure, stop."""

    def __init__(self, scenario: Scenario, options: Options, models_dir: Path) -> None:
        self.scenario = scenario
        self.options = options
        overrides = _production_timings() | {
            "IMAGEN_MODELS_DIR": str(models_dir),
            "IMAGEN_MAX_BATCH": str(scenario.max_batch),
            # The bench's tenant keeps every job of the burst in flight at once.
            "IMAGEN_DEFAULT_MAX_JOBS_IN_FLIGHT": "0",
        }
        self.system = System(preset=options.preset, env_overrides=overrides)
        self.s3 = CountingProxy(self.system.s3.port)
        self.system.s3_proxy = self.s3  # every process reaches the store through it
        self.children: dict[str, ChildProcess] = {}
        self.http: httpx.Client | None = None
        self._db: Any = None
        # Statements the bench itself runs on the system's database (pg_stat_database counts them too).
        self.own_queries = 0

    # --- the system -------------------------------------------------------------------------------

    def start(self) -> None:
        import psycopg

        system = self.system
        system.start_stores()
        env = system.env
        _cli(["migrate"], env)
        api_key = _cli(["keys", "create", "--tenant", "bench"], env).strip().splitlines()[-1]
        server = system.postgres
        self.admin_dsn = server.get_uri("postgres")
        self.postgres = PostgresCounter(self.admin_dsn, DATABASE, Path(server.log), ignore_apps=("bench",))
        self.postgres.log_statements(True)
        self.redis = RedisCounter(env["IMAGEN_REDIS_URL"])
        self._db = psycopg.connect(server.get_uri(DATABASE), autocommit=True, application_name="bench")

        # Each process names itself to Postgres (PGAPPNAME), so that the statement counts say whose they are.
        self._child("api", ["api", "--port", str(system.api_port)])
        control = ["worker", "--pool", "threads", "--concurrency", "4", "--queues", ",".join(CONTROL_QUEUES)]
        self._child("control", [*control, "--hostname", "control@%h"])
        for spec in self.scenario.workers:
            args = ["worker", "--pool", "solo", "--queues", ",".join(spec.queues), "--hostname", f"{spec.name}@%h"]
            self._child(spec.name, args, {"IMAGEN_TORCH_THREADS": str(spec.threads)})

        def ready() -> bool:
            for child in self.children.values():
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            try:
                return httpx.get(f"{system.api_url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, "the API to be ready")
        self.http = httpx.Client(
            base_url=system.api_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def _child(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        environment = {**self.system.env, "PGAPPNAME": name, **(env or {})}
        self.children[name] = ChildProcess(name, args, environment, self.system.logs).start()

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self._db is not None:
            self._db.close()
        for child in self.children.values():
            child.stop()
        self.system.stop()
        if not self.options.keep:
            shutil.rmtree(self.system.root, ignore_errors=True)

    # --- jobs -------------------------------------------------------------------------------------

    def submit(self, count: int, *, num_images: int = 1, seed0: int = 0) -> tuple[list[str], float]:
        """Submit ``count`` jobs at once (one client thread each); their ids and when the first was sent."""
        assert self.http is not None
        http = self.http
        preset = get_preset(self.options.preset)
        stages = {key: {"steps": QUICK_STEPS} for key in preset.request_keys()} if self.options.quick else {}

        def one(i: int) -> str:
            body: dict[str, Any] = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": seed0 + i, "num_images": num_images}
            if stages:
                body["stages"] = stages
            response = http.post("/v1/jobs", json={"kind": "generate", "input": body})
            if response.status_code != 202:
                raise RuntimeError(f"submission answered {response.status_code}: {response.text[:300]}")
            return str(response.json()["id"])

        started = time.time()
        with ThreadPoolExecutor(max_workers=min(count, 64)) as pool:
            ids = list(pool.map(one, range(count)))
        return ids, started

    def wait(self, ids: list[str], timeout_s: float) -> None:
        """Until every job has ended (read from the database: polling the API would add to its counts)."""

        def ended() -> bool:
            self.own_queries += 1
            row = self._db.execute(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status IN ('succeeded', 'failed', 'canceled')",
                (ids,),
            ).fetchone()
            for child in self.children.values():
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            return bool(row[0] == len(ids))

        try:
            wait_until(ended, timeout_s, f"{len(ids)} jobs to end", interval_s=0.5)
        except AssertionError:
            stages = self._db.execute(
                "SELECT name, status, count(*) FROM job_stages WHERE job_id = ANY(%s) GROUP BY name, status"
                " ORDER BY name, status",
                (ids,),
            ).fetchall()
            tails = "\n".join(f"--- {c.name} ---\n{c.log_tail(15)}" for c in self.children.values())
            raise RuntimeError(f"jobs still running after {timeout_s:.0f} s; stages: {stages}\n{tails}") from None

    def warm_up(self) -> None:
        """Models loaded, first passes run: a one-image job, then (when batching) one the size of a full pass."""
        ids, _ = self.submit(1, seed0=90_000)
        self.wait(ids, 600)
        if self.scenario.max_batch > 1 and not self.options.quick:
            ids, _ = self.submit(1, num_images=self.scenario.max_batch, seed0=91_000)
            self.wait(ids, 600)

    def read(self) -> dict[str, Figures]:
        return {"postgres": self.postgres.read(), "redis": self.redis.read(), "s3": self.s3.read()}

    def measure(self) -> Outcome:
        options = self.options
        self.warm_up()
        time.sleep(SETTLE_S)  # the warm-up's late statistics land before the idle window starts
        idle_start = self.read()
        time.sleep(options.idle_s)
        start = self.read()
        idle = {service: delta(start[service], idle_start[service]) for service in SERVICES}
        counted_at = time.monotonic()

        own_before = self.own_queries
        ids, submitted = self.submit(options.jobs, seed0=1)
        # Only a guard against a hang: a busy 2-core machine can take half a minute a job.
        self.wait(ids, 300 + 60 * options.jobs)
        # Redis is read as soon as the last tasks are acknowledged, so that as little idle background as
        # possible is left to subtract; Postgres once its statistics have landed.
        time.sleep(TAIL_S)
        end = {"redis": self.redis.read(), "s3": self.s3.read()}
        window_s = time.monotonic() - counted_at
        time.sleep(SETTLE_S)
        end["postgres"] = self.postgres.read()
        gross = {service: delta(end[service], start[service]) for service in SERVICES}
        gross["postgres"]["stat_xact_commit"] -= self.own_queries - own_before  # each poll commits on its own

        rows = self._db.execute(
            "SELECT status, finished_at, input, error FROM jobs WHERE id = ANY(%s)", (ids,)
        ).fetchall()
        finished = max(row[1].timestamp() for row in rows)
        failed = [f"{status}: {error}" for status, _, _, error in rows if status != "succeeded"]
        images = sum(int(row[2].get("num_images", 1)) for row in rows)
        return Outcome(
            scenario=self.scenario,
            jobs=len(ids),
            images=images,
            failed=failed,
            seconds=finished - submitted,
            window_s=window_s,
            idle_s=options.idle_s,
            gross=gross,
            idle=idle,
            memory=[(name, *_memory_kb(child)) for name, child in self.children.items()],
            batches=self._batches(ids),
            celery_workers=1 + len(self.scenario.workers),
        )

    def _batches(self, ids: list[str]) -> list[BatchRow] | None:
        """Passes per stage from job_stages.batch_id/batch_size; None where the schema has no such columns."""
        columns = {
            row[0]
            for row in self._db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'job_stages'"
                " AND column_name IN ('batch_id', 'batch_size')"
            )
        }
        if columns != {"batch_id", "batch_size"}:
            return None
        rows = self._db.execute(
            "SELECT name, min(position), id, batch_id, batch_size FROM job_stages WHERE job_id = ANY(%s)"
            " GROUP BY name, id, batch_id, batch_size",
            (ids,),
        ).fetchall()
        order: dict[str, int] = {}
        runs: dict[str, int] = defaultdict(int)
        passes: dict[str, dict[Any, int]] = defaultdict(dict)
        for name, position, stage_id, batch_id, batch_size in rows:
            order[name] = min(order.get(name, position), position)
            runs[name] += 1
            # A run that shared no pass (or ran before batches were recorded) is a pass of its own.
            passes[name][batch_id or stage_id] = batch_size or 1
        return [
            BatchRow(name, runs[name], len(passes[name]), sum(passes[name].values()), max(passes[name].values()))
            for name in sorted(order, key=order.__getitem__)
        ]

    # --- capacity ---------------------------------------------------------------------------------

    def probe_capacity(self, seconds: float, object_bytes: int) -> dict[str, Capacity | None]:
        """Each service's capacity on this machine, on this system's servers (after the counts are read)."""
        from bench import service_capacity

        self.postgres.log_statements(False)
        server = self.system.postgres
        redis_port = self.system.redis.port
        assert redis_port is not None
        return {
            "postgres": service_capacity.postgres_transactions(Path(server.bin_path), self.admin_dsn, seconds),
            "redis": service_capacity.redis_commands("127.0.0.1", redis_port, seconds),
            "s3": service_capacity.s3_requests(self.system.s3.endpoint, seconds, object_bytes),
        }


def _production_timings() -> dict[str, str]:
    """The sweeper and heartbeat settings at their defaults: the test suite's are fractions of a second."""
    from core.config import Settings

    names = ("sweep_interval_s", "requeue_after_s", "stranded_after_s")
    return {f"IMAGEN_{name.upper()}": str(Settings.model_fields[name].default) for name in names}


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"imagen-queue {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def _memory_kb(child: ChildProcess) -> tuple[int, int]:
    """VmRSS and VmHWM (the peak) of a child, in kB, from /proc."""
    assert child.process is not None
    try:
        status = Path(f"/proc/{child.process.pid}/status").read_text()
    except FileNotFoundError:
        return 0, 0
    fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def _build_models(preset: str, models_dir: Path) -> None:
    """Build the preset's local weights once, for every scenario's workers."""
    code = (
        "import sys; from pathlib import Path; from core.presets import get_preset; "
        "from workers.preset_files import build_preset; build_preset(get_preset(sys.argv[1]), Path(sys.argv[2]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, preset, str(models_dir)], check=True, cwd=Path(__file__).resolve().parent.parent
    )


# --- the report -------------------------------------------------------------------------------------------


def print_outcome(outcome: Outcome) -> None:
    scenario = outcome.scenario
    print(
        f"\n({scenario.key}) {scenario.title}: IMAGEN_MAX_BATCH={scenario.max_batch}, torch threads {scenario.threads}"
    )
    print(
        f"    {outcome.jobs} jobs, {outcome.images} images in {outcome.seconds:.1f} s: {outcome.jobs_per_s:.3f} jobs/s,"
        f" {outcome.images_per_s:.3f} images/s"
        + (f"; {len(outcome.failed)} FAILED: {outcome.failed[0]}" if outcome.failed else "")
    )
    memory = "; ".join(f"{name} {rss / 1024:.0f} MB (peak {peak / 1024:.0f})" for name, rss, peak in outcome.memory)
    print(f"    memory after the run, RSS: {memory}")
    if outcome.batches is None:
        print("    batch sizes: n/a (job_stages has no batch_id/batch_size columns in this schema)")
        return
    print(f"    {'stage':<14}{'runs':>6}{'passes':>8}{'images/pass':>13}{'largest':>9}")
    for row in outcome.batches:
        print(f"    {row.stage:<14}{row.runs:>6}{row.passes:>8}{row.images / row.passes:>13.2f}{row.largest:>9}")


def print_summary(outcomes: list[Outcome]) -> None:
    print(f"\n{'scenario':<48}{'threads':>8}{'jobs/s':>9}{'images/s':>10}{'vs a':>7}")
    by_key = {o.scenario.key: o for o in outcomes}
    base = by_key.get("a")
    for o in outcomes:
        ratio = f"{o.jobs_per_s / base.jobs_per_s:>7.2f}" if base else f"{'-':>7}"
        label = f"({o.scenario.key}) {o.scenario.title}"
        print(f"{label:<48}{o.scenario.threads:>8}{o.jobs_per_s:>9.3f}{o.images_per_s:>10.3f}{ratio}")
    if base is None:
        print("b/a, c/a: n/a (scenario a not run)")
        return
    if "b" in by_key:
        gain = by_key["b"].images_per_s / base.images_per_s
        verdict = "PASS" if gain >= TARGET_B_OVER_A else "MISS"
        print(f"b/a = {gain:.2f}  (target >= {TARGET_B_OVER_A})  {verdict}")
    if "c" in by_key:
        print(f"c/a = {by_key['c'].images_per_s / base.images_per_s:.2f}")


def _cost_rows(outcomes: list[Outcome]) -> list[tuple[str, str, str]]:
    """(label, service, counter) rows of the per-job table: totals first, then what they are made of."""
    rows = [
        ("postgres transactions", "postgres", "transactions"),
        ("  in progress writes", "postgres", "progress.transactions"),
        ("  in heartbeats", "postgres", "heartbeat.transactions"),
        ("  pg_stat_database commit+rollback", "postgres", "stat_xact"),
        ("postgres statements", "postgres", "statements"),
    ]
    kinds: dict[str, float] = defaultdict(float)
    for o in outcomes:
        for name in o.gross["postgres"]:
            if name.startswith("statements."):
                kinds[name] += o.per_job("postgres", name)
    rows += [
        (f"  {name.split('.', 1)[1]}", "postgres", name)
        for name, n in sorted(kinds.items(), key=lambda k: -k[1])
        if n >= 0.05
    ]
    apps = sorted(
        {name.split("@", 1)[1] for o in outcomes for name in o.gross["postgres"] if name.startswith("statements@")}
    )
    rows += [(f"  from {app}", "postgres", f"statements@{app}") for app in apps]
    rows += [("  in progress writes", "postgres", "progress.statements")]
    rows += [("  in heartbeats", "postgres", "heartbeat.statements")]
    rows += [("progress writes", "postgres", "progress.writes"), ("heartbeats", "postgres", "heartbeat.writes")]
    rows += [
        ("postgres rows inserted", "postgres", "rows_inserted"),
        ("postgres rows updated", "postgres", "rows_updated"),
        ("postgres rows deleted", "postgres", "rows_deleted"),
        ("postgres WAL bytes", "postgres", "wal_bytes"),
        ("redis commands", "redis", "commands"),
    ]
    commands: dict[str, float] = defaultdict(float)
    for o in outcomes:
        for name in o.gross["redis"]:
            if name.startswith("cmd."):
                commands[name] += o.per_job("redis", name)
    rows += [
        (f"  {name[4:].upper()}", "redis", name)
        for name, n in sorted(commands.items(), key=lambda c: -c[1])
        if n >= 0.05
    ]
    rows += [("redis bytes in", "redis", "bytes_in"), ("redis bytes out", "redis", "bytes_out")]
    rows += [("object-store requests", "s3", "requests")]
    methods = sorted({name for o in outcomes for name in o.gross["s3"] if name.startswith("req.")})
    rows += [(f"  {name[4:]}", "s3", name) for name in methods]
    rows += [
        ("object-store request bodies, bytes", "s3", "body_bytes_up"),
        ("object-store bytes up (wire)", "s3", "bytes_up"),
        ("object-store bytes down (wire)", "s3", "bytes_down"),
    ]
    return rows


def _figure(outcome: Outcome, service: str, name: str) -> float:
    if name == "stat_xact":
        return outcome.per_job(service, "stat_xact_commit") + outcome.per_job(service, "stat_xact_rollback")
    return outcome.per_job(service, name)


def print_costs(outcomes: list[Outcome]) -> None:
    print("\nper job, from the services' own counters (Redis: less what the idle system did in the same time)")
    header = f"{'':<40}" + "".join(f"{'(' + o.scenario.key + ')':>12}" for o in outcomes)
    print(header)
    for label, service, name in _cost_rows(outcomes):
        values = [_figure(o, service, name) for o in outcomes]
        print(f"{label:<40}" + "".join(f"{v:>12.{0 if v >= 1000 else 1}f}" for v in values))
    print("the idle system, per second (every worker waiting for work):")
    for o in outcomes:
        print(
            f"    ({o.scenario.key}) {o.celery_workers} Celery workers: redis {o.idle_rate('redis', 'commands'):.1f}"
            f" commands/s, {o.idle_rate('redis', 'bytes_out') / 1000:.1f} kB/s out;"
            f" postgres {o.idle_rate('postgres', 'transactions'):.2f} transactions/s;"
            f" object store {o.idle_rate('s3', 'requests'):.2f} requests/s"
        )


@dataclass(frozen=True)
class Load:
    """What jobs ask of one service in one unit, and what it carries here."""

    service: str
    unit: str
    per_job: float  # all of it, progress writes included, in the costliest scenario
    writes: float  # progress writes per job in that scenario
    per_write: float  # units per progress write
    heartbeats: float  # units per job spent on heartbeats in that scenario
    capacity: Capacity | None
    scale: float = 1.0  # units per unit of the capacity measured (statements per pgbench transaction)

    @property
    def rate(self) -> float | None:
        return self.capacity.rate * self.scale if self.capacity else None

    @property
    def fixed(self) -> float:
        """Per job, less its progress writes and heartbeats: what does not follow a stage's running time."""
        return max(0.0, self.per_job - self.writes * self.per_write - self.heartbeats)


def _loads(outcomes: list[Outcome], capacities: dict[str, Capacity | None]) -> list[Load]:
    from workers.lifecycle import PROGRESS_INTERVAL_S, PROGRESS_ROW_INTERVAL_S

    def per_write(name: str) -> float:
        writes = sum(o.gross["postgres"].get("progress.writes", 0) for o in outcomes)
        return sum(o.gross["postgres"].get(name, 0) for o in outcomes) / writes if writes else 0.0

    def load(service: str, unit: str, counter: tuple[str, str], cost: float, scale: float = 1.0) -> Load:
        # The costliest scenario's figure, so that the model holds for every layout measured.
        costliest = max(outcomes, key=lambda o: _figure(o, *counter))
        capacity = capacities.get(service if service != "object store" else "s3")
        writes = _figure(costliest, "postgres", "progress.writes")
        heartbeats = _figure(costliest, "postgres", f"heartbeat.{counter[1]}") if service == "postgres" else 0.0
        return Load(service, unit, _figure(costliest, *counter), writes, cost, heartbeats, capacity, scale)

    return [
        load("postgres", "transactions", ("postgres", "transactions"), per_write("progress.transactions")),
        load(
            "postgres",
            "statements",
            ("postgres", "statements"),
            per_write("progress.statements"),
            scale=PGBENCH_STATEMENTS_PER_XACT,
        ),
        # Between two progress writes to a row, a running stage appends to its job's live stream every
        # PROGRESS_INTERVAL_S: one XADD and one EXPIRE each (core/live_events.py).
        load("redis", "commands", ("redis", "commands"), 2.0 * PROGRESS_ROW_INTERVAL_S / PROGRESS_INTERVAL_S),
        load("object store", "requests", ("s3", "requests"), 0.0),
    ]


def print_capacity(
    outcomes: list[Outcome], capacities: dict[str, Capacity | None], gpu_jobs_per_s: float, preset: str
) -> None:
    from workers.lifecycle import PROGRESS_ROW_INTERVAL_S

    loads = _loads(outcomes, capacities)
    print(
        "\ncapacity: each service's capacity measured on this machine, over what a job asks of it (the costliest"
        " scenario's figure, progress writes included)"
    )
    print(f"{'service':<14}{'unit':<14}{'capacity here':>16}{'per job':>10}{'jobs/s':>10}   measured with")
    limits: list[tuple[float, Load]] = []
    for load in loads:
        rate = load.rate
        if rate and load.per_job:
            limits.append((rate / load.per_job, load))
        jobs = f"{rate / load.per_job:>10.0f}" if rate and load.per_job else f"{'-':>10}"
        capacity = f"{rate:>12.0f} /s" if rate else f"{'n/a':>14}"
        how = load.capacity.how if load.capacity else "not measured (its tool is missing)"
        print(f"{load.service:<14}{load.unit:<14}{capacity:>16}{load.per_job:>10.1f}{jobs}   {how}")
    if limits:
        jobs_per_s, first = min(limits, key=lambda item: item[0])
        print(f"first to saturate here: {first.service} ({first.unit}) at about {jobs_per_s:.0f} jobs/s")

    stages = len(get_preset(preset).stages)
    # A running denoising stage writes its progress to its row at most every PROGRESS_ROW_INTERVAL_S, and also
    # at its start and its end, however short it is.
    writes_per_gpu_s = 1 / PROGRESS_ROW_INTERVAL_S + 2 * stages * gpu_jobs_per_s
    print(
        f"\nat scale, ASSUMED (a placeholder, not measured): {gpu_jobs_per_s:g} jobs/s per GPU (--gpu-jobs-per-s);"
        f" a busy GPU writes progress {writes_per_gpu_s:.1f} times/s (every {PROGRESS_ROW_INTERVAL_S} s while a stage"
        f" runs, + the start and end of each of {stages} stages a job); heartbeats left out (one per 15 s of a"
        " stage's run: none for stages shorter than that)"
    )
    print(f"{'service':<14}{'unit':<14}{'per GPU /s':>12}{'100 GPUs':>12}{'1000 GPUs':>12}{'GPUs it carries':>17}")
    for load in loads:
        per_gpu = gpu_jobs_per_s * load.fixed + writes_per_gpu_s * load.per_write
        carries = f"{load.rate / per_gpu:>17.0f}" if load.rate and per_gpu else f"{'-':>17}"
        print(
            f"{load.service:<14}{load.unit:<14}{per_gpu:>12.1f}{100 * per_gpu:>12.0f}{1000 * per_gpu:>12.0f}{carries}"
        )
    # Idle workers cost Redis too: each polls its queues, and each one's heartbeat (every 2 s) goes to every
    # worker's gossip subscription, so the bytes grow with the square of the number of workers.
    busiest = max(outcomes, key=lambda o: o.celery_workers)
    workers = busiest.celery_workers
    commands = busiest.idle_rate("redis", "commands") / workers
    heartbeat_bytes = busiest.idle_rate("redis", "bytes_out") / workers**2
    print(
        f"{'redis':<14}{'idle cmds':<14}{commands:>12.1f}{100 * commands:>12.0f}{1000 * commands:>12.0f}{'-':>17}"
        f"   (per idle worker, from {workers} workers idle)"
    )
    print(
        f"{'redis':<14}{'idle MB out':<14}{'~N^2':>12}{heartbeat_bytes * 100**2 / 1e6:>12.1f}"
        f"{heartbeat_bytes * 1000**2 / 1e6:>12.0f}{'-':>17}   (heartbeats: {heartbeat_bytes:.0f} B/s x workers^2)"
    )
    volumes = (
        ("object store", "MB", max(_figure(o, "s3", "bytes_up") + _figure(o, "s3", "bytes_down") for o in outcomes)),
        ("postgres", "WAL MB", max(_figure(o, "postgres", "wal_bytes") for o in outcomes)),
    )
    for service, unit, per_job in volumes:
        per_gpu = gpu_jobs_per_s * per_job / 1e6
        print(f"{service:<14}{unit:<14}{per_gpu:>12.2f}{100 * per_gpu:>12.1f}{1000 * per_gpu:>12.0f}{'-':>17}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="toy", help="the model preset (default toy)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs of one image submitted at once (default 32)")
    parser.add_argument("--scenarios", default=None, help="comma-separated, of a,b,c (default all)")
    parser.add_argument("--quick", action="store_true", help=f"smoke check: 4 jobs of {QUICK_STEPS} steps, scenario a")
    parser.add_argument("--idle", type=float, default=None, help="seconds the idle system is counted (default 20)")
    parser.add_argument("--capacity-seconds", type=float, default=None, help="per probe; 0 skips them (default 5)")
    parser.add_argument(
        "--gpu-jobs-per-s", type=float, default=DEFAULT_GPU_JOBS_PER_S, help="assumed for the scale model"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and data folders")
    args = parser.parse_args()
    keys = [k.strip() for k in (args.scenarios or ("a" if args.quick else "a,b,c")).split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    options = Options(
        preset=args.preset,
        jobs=args.jobs or (4 if args.quick else 32),
        quick=args.quick,
        idle_s=args.idle or (5.0 if args.quick else 20.0),
        keep=args.keep,
    )
    capacity_s = args.capacity_seconds if args.capacity_seconds is not None else (1.0 if args.quick else 5.0)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="imagen-throughput-"))
    print(
        f"{options.preset} preset, {options.jobs} jobs of 1 image at once, scenarios {','.join(keys)};"
        f" {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    _build_models(options.preset, work / "models")
    outcomes: list[Outcome] = []
    capacities: dict[str, Capacity | None] = {}
    try:
        for n, key in enumerate(keys):
            run = ScenarioRun(SCENARIOS[key], options, work / "models")
            try:
                print(f"({key}) starting (logs in {run.system.logs}) ...", flush=True)
                run.start()
                outcomes.append(run.measure())
                print_outcome(outcomes[-1])
                if n == len(keys) - 1 and capacity_s > 0:
                    per_put = max(
                        (
                            o.gross["s3"].get("body_bytes_up", 0) / max(o.gross["s3"].get("req.PUT", 0), 1)
                            for o in outcomes
                        ),
                        default=0,
                    )
                    print(f"measuring each service's capacity ({capacity_s:g} s a probe) ...", flush=True)
                    capacities = run.probe_capacity(capacity_s, int(per_put) or 16_384)
            finally:
                run.stop()
    except KeyboardInterrupt:
        print("interrupted: stopping everything", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not outcomes:
        return 1
    print_summary(outcomes)
    print_costs(outcomes)
    if capacities:
        print_capacity(outcomes, capacities, args.gpu_jobs_per_s, options.preset)
    print(f"\n(whole run {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.2f})")
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
