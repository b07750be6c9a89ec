"""The errors a call can raise: the API's error body as exceptions, one class per kind of problem."""

from typing import Any


class ApiError(Exception):
    """The API refused or failed a request; ``status`` is None when no answer came at all."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        field: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}{where}: {self.message}"


class InvalidInput(ApiError):
    """A 400 or 422: the request named a bad value; ``field`` says which (``input.prompt``)."""


class Unauthorized(ApiError):
    """A 401: the API key is missing, unknown or revoked."""


class Forbidden(Unauthorized):
    """A 403: the key is valid but may not do this (an admin route)."""


class NotFound(ApiError):
    """A 404: no such job for this tenant (another tenant's job is a 404 too)."""


class Conflict(ApiError):
    """A 409: the job is not in a state that allows it, or an Idempotency-Key was reused with another body."""


class RateLimited(ApiError):
    """A 429: over a tenant limit; ``retry_after_s`` says when to try again."""


class Unavailable(ApiError):
    """A 5xx, or no answer: the service cannot serve the request now; it may succeed later."""


class ConnectionFailed(Unavailable):
    """No HTTP answer: the connection was refused, broken or timed out."""


class WaitTimeout(TimeoutError):
    """The job did not end within the time given to ``wait``; ``job`` is how it was last seen."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    429: RateLimited,
}


def error_for(status: int, body: Any, *, request_id: str | None, retry_after_s: float | None) -> ApiError:
    """The exception for an error response: its class from the status, its fields from the error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = str(error.get("message") or "")
        field = error.get("field")
    else:
        code, message, field = "http_error", str(body)[:500] if body else f"HTTP {status}", None
    cls = _BY_STATUS.get(status) or (Unavailable if status >= 500 else ApiError)
    return cls(
        message,
        status=status,
        code=code,
        field=str(field) if field is not None else None,
        request_id=request_id,
        retry_after_s=retry_after_s,
    )
