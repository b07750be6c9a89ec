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
