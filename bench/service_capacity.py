"""What each shared service carries on this machine, measured with its own load tool where there is one:
``pgbench`` for Postgres, ``redis-benchmark`` for Redis, a PUT/GET loop for the S3 server.

Each probe runs for a few seconds against the running server it is given and returns a rate with a line
saying how it was measured; ``None`` when its tool is missing.
"""

import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# pgbench's "simple update" script (-N): BEGIN; UPDATE; SELECT; INSERT; END.
PGBENCH_STATEMENTS_PER_XACT = 5


@dataclass(frozen=True)
class Capacity:
    rate: float  # per second
    unit: str
    how: str


def postgres_transactions(bin_dir: Path, admin_dsn: str, seconds: float, clients: int = 8) -> Capacity | None:
    """Transactions/s of pgbench's simple-update script, in a database of its own on the same server."""
    pgbench = bin_dir / "pgbench"
    if not pgbench.exists():
        found = shutil.which("pgbench")
        if found is None:
            return None
        pgbench = Path(found)
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute("DROP DATABASE IF EXISTS pgbench")
        connection.execute("CREATE DATABASE pgbench")
    dsn = _with_database(admin_dsn, "pgbench")
    subprocess.run([str(pgbench), "-i", "-q", "-s", "1", dsn], check=True, capture_output=True)
    done = subprocess.run(
        [str(pgbench), "-n", "-N", "-c", str(clients), "-j", "2", "-T", str(max(1, round(seconds))), dsn],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps:\n{done.stdout}\n{done.stderr}")
    how = f"pgbench -N (simple update, {PGBENCH_STATEMENTS_PER_XACT} statements), {clients} clients, fsync on"
    return Capacity(float(match.group(1)), "transactions/s", how)


def redis_commands(host: str, port: int, seconds: float, clients: int = 16) -> Capacity | None:
    """Commands/s of redis-benchmark's SET, GET, LPUSH and RPOP (the median), one command per round trip."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return None
    tests = "set,get,lpush,rpop"
    # redis-benchmark runs a request count, not a duration: about `seconds` per test at ~40k/s.
    requests = max(10_000, round(40_000 * seconds))
    done = subprocess.run(
        [tool, "-h", host, "-p", str(port), "-c", str(clients), "-n", str(requests), "-t", tests, "--csv"],
        check=True,
        capture_output=True,
        text=True,
    )
    rates = [float(line.split(",")[1].strip('"')) for line in done.stdout.splitlines()[1:] if line.count(",") >= 1]
    if not rates:
        raise RuntimeError(f"redis-benchmark printed no rates:\n{done.stdout}")
    how = f"redis-benchmark {tests.upper()} median, {clients} clients, no pipelining"
    return Capacity(statistics.median(rates), "commands/s", how)


def s3_requests(endpoint: str, seconds: float, object_bytes: int, threads: int = 4) -> Capacity:
    """Requests/s of PUTs then GETs of ``object_bytes`` objects from ``threads`` minio clients (the mean)."""
    import io

    from minio import Minio

    client = Minio(endpoint, access_key="probe", secret_key="probe-secret", secure=False)
    bucket = "capacity-probe"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    payload = b"\0" * max(1, object_bytes)
    rates = []
    puts = [0] * threads
    for operation in ("put", "get"):
        done = [0] * threads
        stop_at = time.monotonic() + seconds

        def loop(n: int, operation: str = operation, done: list[int] = done, stop_at: float = stop_at) -> None:
            i = 0
            while time.monotonic() < stop_at:
                if operation == "put":
                    client.put_object(bucket, f"probe/{n}/{i % 64}", io.BytesIO(payload), len(payload))
                else:
                    # Only keys this thread's PUTs wrote.
                    response = client.get_object(bucket, f"probe/{n}/{i % max(1, min(64, puts[n]))}")
                    response.read()
                    response.close()
                    response.release_conn()
                i += 1
            done[n] = i

        workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rates.append(sum(done) / seconds)
        if operation == "put":
            puts[:] = done
    how = f"moto server, PUT {rates[0]:.0f}/s and GET {rates[1]:.0f}/s of {object_bytes} B, {threads} clients"
    return Capacity(statistics.mean(rates), "requests/s", how)


def _with_database(dsn: str, database: str) -> str:
    """The same server's URI for another database (``postgresql://user@/db?host=...``)."""
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}" + (f"?{query}" if query else "")
