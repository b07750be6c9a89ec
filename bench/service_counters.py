"""Counters of what the shared services did, read from the services themselves: Postgres statements and
transactions, Redis commands and bytes, object-store requests and bytes.

Each counter's ``read()`` returns cumulative figures by name; the difference of two readings is what
happened between them (``delta``).

- Postgres: statements from the server's own log (``log_statement = all``, one line per statement executed,
  tagged with the database and the client's ``application_name``, which each process of the system sets
  through ``PGAPPNAME``); transactions from the same lines (a COMMIT or ROLLBACK ends one, a statement
  outside BEGIN is one by itself), with progress writes and heartbeats counted apart; rows written from
  ``pg_stat_database`` (which a backend flushes up to 10 s late); WAL bytes from the WAL position.
- Redis: ``INFO all``: calls per command (exact) and bytes in and out, less the counter's own.
- Object store: a proxy in front of the S3 server that reads the HTTP requests going through it.
"""

import contextlib
import re
import socket
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from tests.servers import TcpProxy

Figures = dict[str, float]

# Tagged so that the counter can tell its lines from the rest of the server log: database|app|pid|.
_LOG_PREFIX = "stmt|%d|%a|%p| "
_STATEMENT_LINE = re.compile(r"^stmt\|([^|]*)\|([^|]*)\|(\d+)\| LOG:  (?:statement|execute [^:]*): (.*)$")
# Writes whose number follows how long a stage runs, not how many jobs there are (db/jobs.py): a running
# stage's progress (record_progress) and its heartbeat (beat_heartbeat). Their transactions are counted apart.
_TIMED_WRITES = {
    "progress": re.compile(r"\s*UPDATE job_stages SET progress", re.IGNORECASE),
    "heartbeat": re.compile(r"\s*UPDATE job_stages SET heartbeat_at", re.IGNORECASE),
}
# Redis commands the counters themselves send.
_OWN_REDIS_COMMANDS = {"info"}


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> Figures:
    """What each counter gained between two readings."""
    return {name: after.get(name, 0) - before.get(name, 0) for name in set(after) | set(before)}


class PostgresCounter:
    """Statements and transactions of one database, from the server log; rows and WAL from the statistics."""

    def __init__(self, admin_dsn: str, database: str, log_path: Path, *, ignore_apps: tuple[str, ...] = ()) -> None:
        # ``admin_dsn`` names another database of the server: the counter's own queries stay out of the figures.
        self.admin_dsn = admin_dsn
        self.database = database
        self.log_path = log_path
        self.ignore_apps = set(ignore_apps)
        self._offset = 0
        self._partial = b""
        self._backends: dict[str, _Backend] = {}
        self._counts: Counter[str] = Counter()

    def log_statements(self, on: bool) -> None:
        """Turn the statement log on (from the end of the log as it is now) or off."""
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as connection:
            if on:
                connection.execute("ALTER SYSTEM SET log_statement = 'all'")
                connection.execute(f"ALTER SYSTEM SET log_line_prefix = '{_LOG_PREFIX}'")
                # A statement's parameters can be whole embeddings: the count needs none of them.
                connection.execute("ALTER SYSTEM SET log_parameter_max_length = 0")
            else:
                connection.execute("ALTER SYSTEM RESET log_statement")
            connection.execute("SELECT pg_reload_conf()")
        if on:
            self._offset = self.log_path.stat().st_size
            self._partial = b""

    def read(self) -> Figures:
        self._read_log()
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as connection:
            connection.execute("SELECT pg_stat_clear_snapshot()")
            row = connection.execute(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
                " FROM pg_stat_database WHERE datname = %s",
                (self.database,),
            ).fetchone()
        assert row is not None, f"no database {self.database}"
        names = ("stat_xact_commit", "stat_xact_rollback", "rows_inserted", "rows_updated", "rows_deleted", "wal_bytes")
        return {**self._counts, **{name: float(value) for name, value in zip(names, row, strict=True)}}

    def _read_log(self) -> None:
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next read
        for raw in lines:
            match = _STATEMENT_LINE.match(raw.decode(errors="replace"))
            if match is None:
                continue  # another kind of line, or a statement's continuation line
            database, app, pid, sql = match.groups()
            if database != self.database or app in self.ignore_apps:
                continue
            self._count(app or "other", pid, sql)

    def _count(self, app: str, pid: str, sql: str) -> None:
        words = sql.split(None, 2)
        first = words[0].upper().rstrip(";") if words else ""
        # An empty statement is the connection pool's liveness check (SQLAlchemy's pool_pre_ping).
        kind = {"START": "BEGIN", "END": "COMMIT", "": "ping"}.get(first, first if first.isalpha() else "other")
        self._counts["statements"] += 1
        self._counts[f"statements.{kind}"] += 1
        self._counts[f"statements@{app}"] += 1
        backend = self._backends.setdefault(pid, _Backend())
        if kind == "BEGIN":
            # The ping that checked this connection out of its pool belongs to the transaction.
            backend.open(pinged=backend.pinged)
            return
        if backend.in_transaction:
            backend.statements += 1
            backend.timed = backend.timed or _timed_write(sql)
            # A transaction ends at COMMIT or ROLLBACK, not at ROLLBACK TO a savepoint.
            if kind in ("COMMIT", "ROLLBACK") and (len(words) < 2 or words[1].upper() != "TO"):
                backend.in_transaction = False
                self._counts["transactions"] += 1
                self._counts[f"transactions.{kind}"] += 1
                if backend.timed:
                    self._count_timed(backend)
            return
        # Outside BEGIN, a statement is a transaction of its own.
        self._counts["transactions"] += 1
        self._counts["transactions.autocommit"] += 1
        if timed := _timed_write(sql):
            backend.open(pinged=backend.pinged)
            backend.timed = timed
            self._count_timed(backend)
        backend.pinged = kind == "ping"

    def _count_timed(self, backend: "_Backend") -> None:
        self._counts[f"{backend.timed}.writes"] += 1
        self._counts[f"{backend.timed}.transactions"] += backend.transactions
        self._counts[f"{backend.timed}.statements"] += backend.statements
        backend.in_transaction = False


def _timed_write(sql: str) -> str | None:
    return next((kind for kind, pattern in _TIMED_WRITES.items() if pattern.match(sql)), None)


class _Backend:
    """Where one server process (one client connection) is: in a transaction or not, and what it holds."""

    def __init__(self) -> None:
        self.in_transaction = False
        self.pinged = False  # the last statement was a pool ping, outside a transaction
        self.statements = 0  # of the open transaction, with the ping before it
        self.transactions = 0
        self.timed: str | None = None  # the kind of timed write the transaction holds

    def open(self, *, pinged: bool) -> None:
        self.in_transaction = True
        self.statements = self.transactions = 1 + pinged
        self.timed = None
        self.pinged = False


class RedisCounter:
    """Calls per command and bytes in and out of one Redis server, less the counter's own INFO round trips."""

    _REQUEST = b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n"

    def __init__(self, url: str) -> None:
        # A plain socket, so that the size of each reading on the wire is known exactly: the bytes of one
        # reading are taken out of the next one's figures, which would otherwise count them.
        parsed = urlsplit(url)
        if parsed.scheme in ("redis+socket", "unix"):
            self._address: str | tuple[str, int] = parsed.path
        else:
            self._address = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._own_in = 0
        self._own_out = 0

    def _info(self) -> tuple[bytes, int]:
        """INFO's reply, and its size on the wire."""
        family = socket.AF_UNIX if isinstance(self._address, str) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self._address)
            sock.sendall(self._REQUEST)
            received = b""
            while b"\r\n" not in received:
                received += _receive(sock)
            header, _, body = received.partition(b"\r\n")
            if not header.startswith(b"$"):
                raise RuntimeError(f"INFO answered {received[:200]!r}")
            size = int(header[1:])
            while len(body) < size + 2:
                body += _receive(sock)
        return body[:size], len(header) + 2 + size + 2

    def read(self) -> Figures:
        reply, wire = self._info()
        # The server counted this request before answering it, and counts the reply only after.
        self._own_in += len(self._REQUEST)
        figures: Figures = {"commands": 0.0}
        for line in reply.decode().splitlines():
            name, _, value = line.partition(":")
            command = name.removeprefix("cmdstat_")
            if name.startswith("cmdstat_") and command not in _OWN_REDIS_COMMANDS:
                calls = float(value.split(",")[0].removeprefix("calls="))
                figures[f"cmd.{command}"] = calls
                figures["commands"] += calls
            elif name == "total_net_input_bytes":
                figures["bytes_in"] = float(value) - self._own_in
            elif name == "total_net_output_bytes":
                figures["bytes_out"] = float(value) - self._own_out
        self._own_out += wire
        return figures


def _receive(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("Redis closed the connection mid-reply")
    return data


class _RequestReader:
    """Splits one connection's client-to-server bytes into HTTP/1.1 requests and reports each one."""

    def __init__(self, counter: "CountingProxy") -> None:
        self.counter = counter
        self._head = b""
        self._body_left = 0
        self._lost = False  # a body the reader cannot delimit (chunked): the rest of the connection is not parsed

    def feed(self, data: bytes) -> None:
        while data and not self._lost:
            if self._body_left:
                taken = min(self._body_left, len(data))
                self._body_left -= taken
                data = data[taken:]
                continue
            self._head += data
            data = b""
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                self._lost = True
                self.counter.record("unparsed", 0)
                return
            self._body_left = int(headers.get("content-length", "0") or 0)
            self.counter.record(lines[0].split(" ", 1)[0], self._body_left)


class CountingProxy(TcpProxy):
    """The test suite's loopback proxy, reading the HTTP requests it forwards: requests by method, and the
    bytes each way (request bodies, and everything on the wire)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def record(self, method: str, body_bytes: int) -> None:
        with self._count_lock:
            self._counts["requests"] += 1
            self._counts[f"req.{method}"] += 1
            self._counts["body_bytes_up"] += body_bytes

    def read(self) -> Figures:
        with self._count_lock:
            return {name: float(value) for name, value in self._counts.items()}

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        # The side accepted on the proxy's own port is the client's.
        upstream = source.getsockname()[1] == self.port
        reader = _RequestReader(self) if upstream else None
        wire = "bytes_up" if upstream else "bytes_down"
        try:
            while data := source.recv(65536):
                if reader is not None:
                    reader.feed(data)
                with self._count_lock:
                    self._counts[wire] += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._open.difference_update((source, sink))
