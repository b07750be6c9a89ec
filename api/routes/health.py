"""Liveness and readiness probes."""

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from core.redis_client import get_redis
from db.session import ping
from storage.factory import process_store

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

# Each dependency gets this long to answer: a probe that hangs on one of them would be killed by its
# orchestrator's timeout and tell nobody which one it was.
CHECK_TIMEOUT_S = 3.0
# Checks run side by side; a check that hangs keeps its thread until its own timeouts end it.
_checks_pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


@router.get("/healthz")
def read_health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _broker() -> None:
    get_redis().ping()


def _storage() -> None:
    process_store().ping()


_CHECKS: dict[str, Callable[[], None]] = {"database": ping, "broker": _broker, "storage": _storage}


@router.get(
    "/readyz",
    responses={
        200: {"description": 'every dependency answered: `{"status": "ready", "checks": {...}}`'},
        503: {
            "description": 'a dependency did not answer: `{"status": "unavailable", "checks": {"database":'
            ' "ok", "broker": "error: unreachable", ...}}`',
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    },
)
def read_readiness() -> JSONResponse:
    """The database, the broker and the object store each answer within ``CHECK_TIMEOUT_S``."""
    futures = {name: _checks_pool.submit(check) for name, check in _CHECKS.items()}
    wait(futures.values(), timeout=CHECK_TIMEOUT_S)
    checks: dict[str, str] = {}
    for name, future in futures.items():
        if not future.done():
            checks[name] = f"error: no answer within {CHECK_TIMEOUT_S:g} s"
        elif (exc := future.exception()) is not None:
            # The reason goes to the operator's log: /readyz answers anyone, and errors name hosts and paths.
            log.warning("readiness: the %s check failed: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "error: unreachable"
        else:
            checks[name] = "ok"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
