"""Logs every process writes the same way: plain text for a terminal, or one JSON object a line
(``IMAGEN_LOG_FORMAT=json``) for a log pipeline, each line carrying the request it serves.

The API takes a request id from each request (the client's ``X-Request-ID``, or a new one) and every job
it enqueues carries it in its Celery messages' headers, from stage to stage: a job's lines in the API and
in every worker that ran it share that id, and the worker's lines also name the job, the stage and the
Celery task. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

# The header a Celery message carries the request id in (and the attribute Celery gives it on the task's
# request).
REQUEST_ID_TASK_HEADER = "imagen_request_id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a line says of where it runs, as set by the API middleware and the Celery signals.
_CONTEXT: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"imagen_log_{name}", default=None)
    for name in ("request_id", "job_id", "stage", "task_id")
}


def current_request_id() -> str | None:
    return _CONTEXT["request_id"].get()


@contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Within the block, log lines carry ``values`` (request_id, job_id, stage, task_id)."""
    tokens = bind(**values)
    try:
        yield
    finally:
        unbind(tokens)


def bind(**values: str | None) -> list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]]:
    """Set context values until ``unbind`` (for code that starts and ends in separate callbacks)."""
    return [(_CONTEXT[name], _CONTEXT[name].set(value)) for name, value in values.items()]


def unbind(tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]]) -> None:
    for var, token in reversed(tokens):
        try:
            var.reset(token)
        except ValueError:  # set in another context (a thread pool): just clear it
            var.set(None)


class ContextFilter(logging.Filter):
    """Puts the current context values on every record (None when unset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the context, and the
    exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in _CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: str | None = None, level: int = logging.INFO) -> None:
    """Send the root logger's lines to stderr in ``log_format`` (``text`` or ``json``; the setting
    ``IMAGEN_LOG_FORMAT`` by default); other handlers on the root logger are replaced."""
    if log_format is None:
        from core.config import get_settings

        log_format = get_settings().log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: None (its loggers go to the root handler set above) for JSON, so that
    its access lines are JSON too; its own colourful defaults for text."""
    if log_format != "json":
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.access")},
    }


def task_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The request id to put in a Celery message's headers, from the current context: nothing if there is
    none, or if the sender set the header itself (to the job's own id, or to "" for a job without one)."""
    request_id = current_request_id()
    if request_id is None or (headers and REQUEST_ID_TASK_HEADER in headers):
        return {}
    return {REQUEST_ID_TASK_HEADER: request_id}
