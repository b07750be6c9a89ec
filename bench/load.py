"""Benchmark: submissions and polls through two API processes, against baselines served the same way.

Starts Postgres, Redis and an S3 server (the test suite's helpers), then one uvicorn with two worker
processes behind one address (``uvicorn --workers 2``: the kernel hands each new connection to one of
them). That uvicorn serves ``bench/baseline_app.py``: the real app plus two baseline routes, one indexed
SELECT and one single-row INSERT on the same engine, so a route and its baseline share processes,
middleware, connection pool and JSON. No model worker runs: submitted jobs wait in their Redis queue.

The load comes from a separate process (asyncio, one keep-alive connection per client), so its own
interpreter is not the API's; on a 2-core machine the client, both API processes, Postgres and Redis
still share the cores, and the table shows how much of them each used.

    python bench/load.py                            # about 90 s, loopback only, stops by itself
    python bench/load.py --seconds 8 --clients 1,32,64
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the test suite's server helpers live in tests/

# The tiny preset's smallest job: the submission path, not the cascade, is what is measured.
JOB = {"kind": "generate", "input": {"prompt": "a corgi wearing a crown", "resolution": 64}}
API_WORKERS = 2
SUBMISSIONS_TARGET = 5 * 51  # five times what one API process managed on main (FACTS: 51/s at 32 clients)


@dataclass
class Phase:
    """One measurement: ``clients`` concurrent clients sending one kind of request for ``seconds``."""

    key: str  # insert, submit, select, poll or poll-304
    label: str
    method: str
    paths: list[str]
    expect: int
    body: dict[str, Any] | None = None
    clients: int = 1
    seconds: float = 4.0
    warmup_s: float = 1.0
    headers: dict[str, str] = field(default_factory=dict)
    # Send each path's ETag back as If-None-Match (looked up before the clock starts).
    conditional: bool = False


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu_s: float
    first_error: str = ""
    skipped: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# --- the load generator (its own process) -------------------------------------------------------------


async def _drive(url: str, api_key: str, phase: Phase) -> Result:
    """Run one phase; aiohttp when installed (the lighter client), else httpx."""
    headers = {"Authorization": f"Bearer {api_key}", **phase.headers}
    try:
        import aiohttp
    except ImportError:
        aiohttp = None  # type: ignore[assignment]

    if aiohttp is not None:
        connector = aiohttp.TCPConnector(limit=phase.clients, force_close=False)
        async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

            async def send(path: str, extra: dict[str, str]) -> tuple[int, str, str]:
                async with session.request(phase.method, path, json=phase.body, headers=extra) as response:
                    body = await response.read()
                    return response.status, response.headers.get("etag", ""), body[:300].decode(errors="replace")

            return await _run(phase, send)
    import httpx

    limits = httpx.Limits(max_connections=phase.clients, max_keepalive_connections=phase.clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:

        async def send(path: str, extra: dict[str, str]) -> tuple[int, str, str]:
            response = await client.request(phase.method, path, json=phase.body, headers=extra)
            return response.status_code, response.headers.get("etag", ""), response.text[:300]

        return await _run(phase, send)


async def _run(phase: Phase, send: Any) -> Result:
    etags: dict[str, str] = {}
    if phase.conditional:
        for path in phase.paths:
            _, etag, _ = await send(path, {})
            if not etag:
                return Result(0, 0, phase.seconds, [], 0.0, skipped="no ETag header: conditional GET not supported")
            etags[path] = etag
    latencies: list[float] = []
    errors = 0
    first_error = ""
    start = time.perf_counter() + phase.warmup_s
    end = start + phase.seconds

    async def client(n: int) -> None:
        nonlocal errors, first_error
        i = n * 7919
        while (t0 := time.perf_counter()) < end:
            path = phase.paths[i % len(phase.paths)]
            i += 1
            extra = {"If-None-Match": etags[path]} if phase.conditional else {}
            status, _, text = await send(path, extra)
            t1 = time.perf_counter()
            if t0 < start or t1 > end:
                continue  # warming up, or past the window
            if status != phase.expect:
                errors += 1
                first_error = first_error or f"{status} {text}"
            else:
                latencies.append((t1 - t0) * 1000)

    cpu0 = _own_cpu()
    await asyncio.gather(*(client(n) for n in range(phase.clients)))
    return Result(len(latencies), errors, phase.seconds, latencies, _own_cpu() - cpu0, first_error)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drive_main() -> None:
    """The ``--drive`` entry: a phase as JSON on stdin, its result as JSON on stdout."""
    spec = json.load(sys.stdin)
    result = asyncio.run(_drive(spec["url"], spec["api_key"], Phase(**spec["phase"])))
    # Warm-up CPU is counted too; scale it to the measured window.
    phase = spec["phase"]
    result.client_cpu_s *= phase["seconds"] / (phase["seconds"] + phase["warmup_s"])
    json.dump(asdict(result), sys.stdout)


# --- the system under test ----------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by groups of processes (the API, Postgres, Redis) between two readings.

    A process that exits between readings takes its last interval with it (Postgres closes the backends
    of connections the pool let go), so the figures are a floor.
    """

    def __init__(self, groups: dict[str, list[Any]]) -> None:
        self.groups = groups
        self._seen: dict[int, float] = {}
        self.lap()

    def lap(self) -> dict[str, float]:
        import psutil

        used: dict[str, float] = {}
        for name, roots in self.groups.items():
            used[name] = 0.0
            for root in roots:
                for process in [root, *root.children(recursive=True)]:
                    try:
                        times = process.cpu_times()
                    except psutil.NoSuchProcess:
                        continue
                    total = times.user + times.system
                    used[name] += total - self._seen.get(process.pid, 0.0)
                    self._seen[process.pid] = total
        return used


def _start_api(env: dict[str, str], port: int, log_path: Path) -> "subprocess.Popen[bytes]":
    # The settings `imagen-queue api --workers 2` runs uvicorn with, on the bench's app module.
    args = [sys.executable, "-m", "uvicorn", "baseline_app:app", "--app-dir", str(REPO / "bench")]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(API_WORKERS), "--log-level", "info"]
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _tenant_key() -> tuple[str, str]:
    """A tenant whose rate limit is enforced but never reached, with no jobs-in-flight quota, and its key.

    The bench piles up thousands of queued jobs, which a tenant under a jobs-in-flight quota never has:
    counting them on each submission would measure the pile, not the path.
    """
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        tenant = tenants.get_or_create_tenant(session, name="bench")
        tenants.set_quota(session, tenant=tenant, requests_per_minute=1_000_000_000, max_jobs_in_flight=0)
        _, key = tenants.create_api_key(session, tenant=tenant)
        return str(tenant.id), key


def _job_ids(tenant_id: str, limit: int) -> list[str]:
    from sqlalchemy import text

    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            text("SELECT id FROM jobs WHERE tenant_id = :t ORDER BY created_at LIMIT :n"), {"t": tenant_id, "n": limit}
        )
        return [str(row[0]) for row in rows]


def _run_phase(url: str, api_key: str, phase: Phase) -> Result:
    spec = json.dumps({"url": url, "api_key": api_key, "phase": asdict(phase)})
    done = subprocess.run(
        [sys.executable, __file__, "--drive"],
        input=spec.encode(),
        capture_output=True,
        timeout=phase.warmup_s + phase.seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return Result(**json.loads(done.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--clients", default="1,32", help="comma-separated concurrency levels")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive_main()
        return 0
    levels = [int(n) for n in args.clients.split(",")]

    import httpx

    from cli.services import free_port
    from tests.servers import System, stop_process, wait_until

    system = System()
    api: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        system.start_stores()
        os.environ.update({k: v for k, v in system.env.items() if k.startswith("IMAGEN_")})
        from core.config import get_settings

        get_settings.cache_clear()
        from sqlalchemy import text

        from bench.baseline_app import CREATE_BENCH_TABLE
        from db.migrate import upgrade
        from db.session import get_engine

        upgrade(system.env["IMAGEN_DATABASE_URL"])
        with get_engine().begin() as connection:
            connection.execute(text(CREATE_BENCH_TABLE))
        tenant_id, api_key = _tenant_key()

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api = _start_api(system.env, port, system.logs / "api.log")

        def ready() -> bool:
            assert api is not None and api.poll() is None, (system.logs / "api.log").read_text()[-3000:]
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, "the API to be ready")
        time.sleep(2)  # both uvicorn workers up, not only the first to answer
        import psutil

        assert system.redis.process is not None
        groups = {
            "api": [psutil.Process(api.pid)],
            "postgres": [psutil.Process(system.postgres.get_pid())],
            "redis": [psutil.Process(system.redis.process.pid)],
        }
        # Jobs to poll: a first batch, so polls never depend on how the submission phases went.
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}) as seed_client:
            for _ in range(64):
                assert seed_client.post("/v1/jobs", json=JOB).status_code == 202
        ids = _job_ids(tenant_id, 256)
        selects, polls = [f"/bench/select/{i}" for i in ids], [f"/v1/jobs/{i}" for i in ids]

        rows: list[tuple[Phase, Result, dict[str, float]]] = []
        meter = CpuMeter(groups)
        for clients in levels:
            common = {"clients": clients, "seconds": args.seconds, "warmup_s": args.warmup}
            phases = [
                Phase("insert", "baseline INSERT  POST /bench/insert", "POST", ["/bench/insert"], 202, JOB, **common),
                Phase("submit", "submit           POST /v1/jobs", "POST", ["/v1/jobs"], 202, JOB, **common),
                Phase("select", "baseline SELECT  GET /bench/select/{id}", "GET", selects, 200, **common),
                Phase("poll", "poll             GET /v1/jobs/{id}", "GET", polls, 200, **common),
                Phase("poll-304", "poll, unchanged  GET /v1/jobs/{id}", "GET", polls, 304, conditional=True, **common),
            ]
            for phase in phases:
                meter.lap()
                result = _run_phase(url, api_key, phase)
                rows.append((phase, result, meter.lap()))
        _print_table(rows, args, time.monotonic() - started)
    finally:
        if api is not None:
            stop_process(api)
        system.stop()
        shutil.rmtree(system.root, ignore_errors=True)
    return 0


def _print_table(rows: list[tuple[Phase, Result, dict[str, float]]], args: argparse.Namespace, took: float) -> None:
    try:
        import aiohttp  # noqa: F401

        client_lib = "aiohttp"
    except ImportError:
        client_lib = "httpx"
    print(
        f"\nuvicorn --workers {API_WORKERS} on one address; load from one separate process ({client_lib}, "
        f"keep-alive); {os.cpu_count()} cores shared by all; {args.seconds:g} s per phase after "
        f"{args.warmup:g} s warm-up"
    )
    print("cpu: cores busy during the phase (cpu-seconds / second), per process group; api cpu ms/req: the API")
    print("processes' CPU per request served, the figure that other load on the machine disturbs least\n")
    header = f"{'phase':44} {'clients':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
    header += f"   {'api':>4} {'pg':>4} {'redis':>5} {'client':>6}   {'api cpu ms/req':>14}"
    print(header)
    print("-" * len(header))
    by_key: dict[tuple[str, int], Result] = {}
    for phase, result, cpu in rows:
        by_key[(phase.key, phase.clients)] = result
        if result.skipped:
            print(f"{phase.label:44} {phase.clients:>7}   ({result.skipped})")
            continue
        busy = {name: used / (phase.seconds + phase.warmup_s) for name, used in cpu.items()}
        line = f"{phase.label:44} {phase.clients:>7} {result.rate:>8.0f}"
        line += f" {result.pct(0.5):>7.1f} {result.pct(0.99):>7.1f} {result.errors:>6}"
        line += f"   {busy.get('api', 0):>4.2f} {busy.get('postgres', 0):>4.2f}"
        line += f" {busy.get('redis', 0):>5.2f} {result.client_cpu_s / phase.seconds:>6.2f}"
        # Requests of the warm-up count too: the API's CPU covers the whole phase.
        served = result.rate * (phase.seconds + phase.warmup_s)
        line += f"   {1000 * cpu.get('api', 0) / served if served else float('nan'):>14.2f}"
        print(line)
        if result.first_error:
            print(f"    first error: {result.first_error[:200]}")

    print("\ntargets")
    top = max(phase.clients for phase, _, _ in rows)
    submit, insert = by_key.get(("submit", top)), by_key.get(("insert", top))
    if submit and insert and insert.rate:
        ratio = submit.rate / insert.rate
        print(
            f"  submissions/s at {top} clients / baseline INSERT/s: {ratio:.2f}x  (target >= 0.5x)  "
            f"{'PASS' if ratio >= 0.5 else 'FAIL'}"
        )
    if submit:
        print(
            f"  submissions/s at {top} clients: {submit.rate:.0f}/s  (target >= {SUBMISSIONS_TARGET}/s = 5 x 51/s)  "
            f"{'PASS' if submit.rate >= SUBMISSIONS_TARGET else 'FAIL'}"
        )
    for clients in sorted({phase.clients for phase, _, _ in rows}):
        poll, select = by_key.get(("poll", clients)), by_key.get(("select", clients))
        if poll and select and poll.latencies_ms and select.latencies_ms:
            ratio = poll.pct(0.5) / select.pct(0.5)
            print(
                f"  GET /v1/jobs/{{id}} p50 / baseline SELECT p50 at {clients} clients: {ratio:.2f}x  "
                f"(target <= 2x)  {'PASS' if ratio <= 2 else 'FAIL'}"
            )
    print(f"\n(whole run {took:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
