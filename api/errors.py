"""Turn every error, expected or not, into the contract's JSON error body."""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.request_guard import REQUEST_ID_HEADER, request_id_of
from core.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from core.job_input import JOB_KINDS
from storage.errors import StoreUnavailable

log = logging.getLogger(__name__)
# How long a client should wait before it tries again after a dependency was unreachable.
RETRY_AFTER_S = 5

_STATUS = {
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 422,
    Unauthorized: 401,
    Forbidden: 403,
    TooManyRequests: 429,
    ServiceUnavailable: 503,
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


_LOCATIONS = ("body", "query", "path", "header")


def _field_of(error: Mapping[str, Any]) -> str | None:
    """The request field an error is about, as the client wrote it.

    Pydantic puts the member of a union it tried into the location (a job kind, a model's name); the
    client never wrote those.
    """
    loc = [str(p) for p in error.get("loc", ()) if p not in _LOCATIONS]
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        return ".".join([*loc, "kind"])
    if loc and loc[0] in JOB_KINDS:  # the body's top level has no field named like a kind
        loc = loc[1:]
    parts = [p for p in loc if not (p[:1].isupper() or "[" in p)]
    return ".".join(parts) or None


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
    headers = None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=status, headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx")
        detail = ctx.get("error", "") if isinstance(ctx, dict) else ""
        return JSONResponse(
            error_body("malformed_json", f"the request body is not valid JSON: {detail}".rstrip(": "), "body"),
            status_code=400,
        )
    field = _field_of(first)
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    if first.get("type") == "missing" and field is None:
        message = "a JSON request body is required"
    text = f"{field}: {message}" if field else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return JSONResponse(error_body("invalid_request", text, field), status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
    field = "body" if exc.status_code == 413 else None
    return JSONResponse(
        error_body(code, str(exc.detail), field), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database or the object store did not answer: the request may succeed if tried again."""
    what = "the object store" if isinstance(exc, StoreUnavailable) else "the database"
    log.warning("request %s: %s is unavailable: %s: %s", request_id_of(request.scope), what, type(exc).__name__, exc)
    return JSONResponse(
        error_body("unavailable", f"{what} is unavailable right now; try again in a few seconds"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Anything else: a 500 in the contract's shape, with the request id that finds it in the log."""
    request_id = request_id_of(request.scope) or "-"
    log.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", f"the server failed on this request; quote request id {request_id}"),
        status_code=500,
        headers={REQUEST_ID_HEADER: request_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the API as ``{"error": {"code", "message", "field"}}``."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for unavailable in (OperationalError, InterfaceError, PoolTimeout, StoreUnavailable):
        app.add_exception_handler(unavailable, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
