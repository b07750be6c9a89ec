"""What every HTTP request goes through first: a request id, and a cap on the body before anything reads it.

The cap applies before authentication and before JSON parsing, so no client, signed in or not, can make
the API buffer more than one request's worth of bytes.
"""

import re
import uuid
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.images import MAX_BASE64_CHARS
from core.logs import log_context

# The largest request the contract needs: an image of MAX_IMAGE_BYTES as base64, plus the rest of a job.
MAX_REQUEST_BYTES = MAX_BASE64_CHARS + 1024 * 1024
REQUEST_ID_HEADER = "x-request-id"
# A client's own request id is kept when it is short and plain; anything else gets a fresh one.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_of(scope: Scope) -> str | None:
    """The id the guard gave this request (None outside it)."""
    state: dict[str, Any] = scope.get("state") or {}
    return state.get("request_id")


class RequestGuard:
    """ASGI middleware: tags each request with an id (echoed as ``X-Request-ID``) and answers 413 to a body
    over ``max_body_bytes``, whether it declared its length or not."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        given = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        too_large = f"the request body is over {self.max_body_bytes} bytes"
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _too_large(too_large, request_id)(scope, receive, send)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI lets an HTTPException from reading the body through as it is.
                    raise HTTPException(status_code=413, detail=too_large)
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, capped_receive, send_with_id)


def _too_large(message: str, request_id: str) -> JSONResponse:
    # Imported here: api.errors imports this module for the request id.
    from api.errors import error_body

    return JSONResponse(
        error_body("payload_too_large", message, "body"),
        status_code=413,
        # The client may still be sending the body it declared: do not leave the connection half-read.
        headers={REQUEST_ID_HEADER: request_id, "Connection": "close"},
    )
