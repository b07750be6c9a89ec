"""What the sync and async clients share: each call's request, the retry rules, errors from responses,
image inputs and the Server-Sent Events decoder. No I/O happens here."""

import base64
import json
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from imagen_queue_client.errors import ApiError, error_for
from imagen_queue_client.models import Event

log = logging.getLogger("imagen_queue_client")

DEFAULT_API_URL = "http://127.0.0.1:8000"
VERSION = "0.1.0"
USER_AGENT = f"imagen-queue-client/{VERSION}"
# An event stream sends a keepalive comment every 15 s: a read that waits longer than this is a dead stream.
STREAM_READ_TIMEOUT_S = 45.0


def resolve_base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("IMAGEN_API_URL") or DEFAULT_API_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get("IMAGEN_API_KEY")
    if not key:
        raise ValueError("no API key: pass api_key=... or set IMAGEN_API_KEY")
    return key


class DeadlinePassed(Exception):
    """Raised inside ``stream`` when ``wait``'s time is up."""


@dataclass(frozen=True)
class Call:
    """One HTTP request of the API, and whether sending it twice does no harm."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    timeout_s: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is sent again.

    429 and 503 are retried after the server's Retry-After (else a backoff), for every call; a connection
    that could not be made is retried for every call (nothing reached the server); a connection broken
    after the request went out, and 502/504, only for calls that are safe to repeat (reads, cancel,
    delete, and submissions, which carry an Idempotency-Key). At most ``max_retries`` times, and never
    past ``max_wait_s`` of waiting in all: a longer Retry-After is raised to the caller instead.
    """

    max_retries: int = 3
    max_wait_s: float = 60.0
    backoff_s: float = 0.5

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2**attempt, 8.0)

    def _within(self, attempt: int, waited_s: float, delay_s: float) -> float | None:
        if attempt >= self.max_retries or waited_s + delay_s > self.max_wait_s:
            return None
        return delay_s

    def after_error(self, error: ApiError, call: Call, *, attempt: int, waited_s: float) -> float | None:
        """Seconds to wait before sending ``call`` again after ``error``; None to give up."""
        if error.status in (429, 503) or (error.status in (502, 504) and call.idempotent):
            delay = error.retry_after_s if error.retry_after_s is not None else self._backoff(attempt)
            return self._within(attempt, waited_s, delay)
        return None

    def after_transport_error(
        self, exc: httpx.TransportError, call: Call, *, attempt: int, waited_s: float
    ) -> float | None:
        """Seconds to wait before sending ``call`` again after the connection failed; None to give up."""
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if not (never_sent or call.idempotent):
            return None
        return self._within(attempt, waited_s, self._backoff(attempt))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: this API never sends one


def error_of(response: httpx.Response) -> ApiError:
    """The exception an error response stands for (its body must have been read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_for(
        response.status_code,
        body,
        request_id=response.headers.get("x-request-id"),
        retry_after_s=_retry_after(response),
    )


def describe(exc: httpx.TransportError, call: Call) -> str:
    return f"{call.method} {call.path}: {type(exc).__name__}: {exc or 'no answer'}"


def image_input(image: Any) -> dict[str, Any]:
    """An IMAGE field: bytes or a path (sent as base64), an http(s) URL, or a dict already in the API's shape
    (``{"base64": ...}``, ``{"url": ...}``, ``{"artifact": {"job_id", "stage", "index"}}``)."""
    if isinstance(image, dict):
        return image
    if isinstance(image, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(image)).decode()}
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return {"url": image}
    if isinstance(image, str | os.PathLike):
        return {"base64": base64.b64encode(Path(image).read_bytes()).decode()}
    raise TypeError(f"an image is bytes, a path, an http(s) URL or a dict; got {type(image).__name__}")


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def submit_call(
    kind: str,
    input: Mapping[str, Any],
    *,
    webhook: str | Mapping[str, Any] | None,
    priority: int | None,
    metadata: Mapping[str, Any] | None,
    wait_s: float | None,
    idempotency_key: str | None,
) -> Call:
    body: dict[str, Any] = {"kind": kind, "input": dict(input)}
    if webhook is not None:
        body["webhook"] = {"url": webhook} if isinstance(webhook, str) else dict(webhook)
    if priority is not None:
        body["priority"] = priority
    if metadata is not None:
        body["metadata"] = dict(metadata)
    # One key for this submission, sent again on each of its retries: the server answers a repeat with
    # the job the first one created, never a second job.
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    timeout_s = None
    if wait_s:
        headers["Prefer"] = f"wait={wait_s:g}"
        timeout_s = wait_s + 30.0
    return Call("POST", "/v1/jobs", json=body, headers=headers, idempotent=True, timeout_s=timeout_s)


def generate_input(
    prompt: str,
    *,
    negative_prompt: str | None = None,
    num_images: int | None = None,
    seed: int | None = None,
    resolution: int | None = None,
    stages: Mapping[str, Mapping[str, Any]] | None = None,
    caption: bool | None = None,
    index: bool | None = None,
) -> dict[str, Any]:
    return _clean(
        {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "num_images": num_images,
            "seed": seed,
            "resolution": resolution,
            "stages": {k: dict(v) for k, v in stages.items()} if stages else None,
            "caption": caption,
            "index": index,
        }
    )


def list_call(*, status: str | None, kind: str | None, limit: int, cursor: str | None) -> Call:
    return Call("GET", "/v1/jobs", params=_clean({"status": status, "kind": kind, "limit": limit, "cursor": cursor}))


def search_call(
    *, text: str | None, image: Any, collection: str | None, k: int | None, timeout_s: float | None = None
) -> Call:
    body = _clean({"text": text, "collection": collection, "k": k})
    if image is not None:
        body["image"] = image_input(image)
    # Read-only: sending it twice costs a second embedding, nothing else.
    return Call("POST", "/v1/search", json=body, idempotent=True, timeout_s=timeout_s)


class SSEDecoder:
    """Server-Sent Events from lines: ``feed`` each line (without its newline), get an Event at each blank line."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = Event(event=self._event or "message", data=_data(self._data), id=self._id)
            self._event, self._data, self._id = "", [], None
            return event
        if line.startswith(":"):
            return None  # a comment: the server's keepalive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value or None
        return None


def _data(lines: list[str]) -> dict[str, Any]:
    text = "\n".join(lines)
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


def stream_error(event: Event) -> ApiError | None:
    """The error an ``error`` event reports (the key was revoked while the stream was open)."""
    if event.event != "error":
        return None
    from imagen_queue_client.errors import Unauthorized

    code = str(event.data.get("code") or "error")
    cls = Unauthorized if code == "unauthorized" else ApiError
    return cls(str(event.data.get("message") or "the stream ended with an error"), code=code)
