"""The OpenAPI document as the API really answers: its bearer scheme, and its one error body on every error.

FastAPI documents a 422 of its own shape (``HTTPValidationError``) that this API never sends; the errors it
does send (``api.errors``) are ``{"error": {"code", "message", "field"}}`` whatever the status. Each route
names the errors peculiar to it (``error_responses``); those every route of a kind can answer are added
here by rule, so a new route is documented as truly as the old ones.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import ErrorResponse

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}

ERROR_DESCRIPTIONS = {
    400: "The request body is not valid JSON.",
    401: "The API key is missing, malformed, unknown or revoked (with `WWW-Authenticate: Bearer`).",
    403: "The API key is not an admin key.",
    404: "No such job (another tenant's job is a 404 too), or no such image artifact among the tenant's jobs.",
    409: "The request conflicts with the job's state.",
    413: "The request body is larger than the API accepts.",
    422: "The request is invalid; `field` names the field at fault and `message` what is allowed.",
    429: "A rate limit or quota of the tenant is exceeded (with `Retry-After`).",
    503: "The database, the object store or the broker is unreachable right now (with `Retry-After`).",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}
# Every route that takes an API key can answer these, and every route with a JSON body these.
_AUTHENTICATED = (401, 429, 503)
_WITH_BODY = (400, 413, 422)


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route's own error statuses, in the error schema; ``descriptions`` as
    ``s409="..."`` say what that status means on this route."""
    return {
        status: {
            "model": ErrorResponse,
            "description": descriptions.get(f"s{status}", ERROR_DESCRIPTIONS[status]),
        }
        for status in statuses
    }


def _error_response(status: int, description: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
    if status in _ERROR_HEADERS:
        response["headers"] = _ERROR_HEADERS[status]
    return response


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Put the error schema on every error status of every operation, adding the statuses its kind of route
    can answer, and drop FastAPI's validation-error schemas."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            statuses: set[int] = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
            if operation.get("security"):
                statuses.update(_AUTHENTICATED)
            if "requestBody" in operation:
                statuses.update(_WITH_BODY)
            if operation.get("parameters"):
                statuses.add(422)
            if "{job_id}" in path:
                statuses.add(404)
            for status in sorted(statuses):
                known = responses.get(str(status), {})
                schemas = [media.get("schema") for media in known.get("content", {}).values()]
                if status != 422 and any(schema != _ERROR_REF for schema in schemas):
                    continue  # a body of its own (/readyz's checks), documented by its route
                description = known.get("description") if status != 422 else None
                merged = _error_response(status, description)
                merged["headers"] = {**merged.get("headers", {}), **known.get("headers", {})}
                if not merged["headers"]:
                    del merged["headers"]
                responses[str(status)] = merged
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    if "ErrorResponse" not in components:
        for name, definition in (
            ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {}).items()
        ):
            components.setdefault(name, definition)
        components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components["ErrorResponse"].pop("$defs", None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve ``/openapi.json`` (and ``/docs`` from it) with the errors documented as the API sends them."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                    tags=app.openapi_tags,
                    servers=app.servers,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
