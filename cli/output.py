"""What the CLI prints: tables (rich), JSON for --json, and the exit codes every command shares."""

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Exit codes (also in `imagen-queue --help` and the README).
OK = 0
JOB_FAILED = 1  # the job failed or was canceled; an admin command found nothing to act on
USAGE = 2  # bad command line, or the API refused the request (4xx)
UNAVAILABLE = 3  # the API or the database could not be reached, or answered 5xx

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 the job failed or was canceled (or an admin command found nothing to act on);"
    " 2 bad usage, or the API refused the request (4xx); 3 the service is unreachable or failed (5xx)."
)


def _console(stream: Any) -> Console:
    # Off a terminal, tables keep their rows whole: a pipe has no width to wrap to.
    width = None if stream.isatty() else 100_000
    return Console(file=stream, width=width, highlight=False, soft_wrap=True)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Rows in left-aligned columns, two spaces apart, under a header."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
    for name in header:
        table.add_column(Text(name), no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    _console(sys.stdout).print(table)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (dataclasses as their ``raw`` JSON where they keep it)."""
    print(json.dumps(to_json(value), indent=2, default=_plain))


def to_json(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    raw = getattr(value, "raw", None)
    if is_dataclass(value) and not isinstance(value, type):
        return raw if raw else asdict(value)
    return value


def error(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
