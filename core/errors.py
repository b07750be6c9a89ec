"""Domain errors. Only api/ turns them into HTTP responses."""


class DomainError(Exception):
    """Base of the errors a client can cause."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class InvalidInput(DomainError):
    code = "invalid_request"


class Unauthorized(DomainError):
    code = "unauthorized"


class Forbidden(DomainError):
    code = "forbidden"


class ServiceUnavailable(DomainError):
    """A dependency (broker, workers) cannot serve the request right now; the client may retry."""

    code = "unavailable"


class TooManyRequests(DomainError):
    """The tenant is over one of its limits; it may retry after ``retry_after_s`` seconds."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class RateLimited(TooManyRequests):
    """More requests in the last minute than the tenant's rate allows."""

    code = "rate_limited"


class QuotaExceeded(TooManyRequests):
    """As many of the tenant's jobs queued or running as its quota allows."""

    code = "quota_exceeded"
