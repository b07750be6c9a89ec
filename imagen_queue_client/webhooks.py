"""Verify a webhook delivery as a receiver: the Standard Webhooks scheme the workers sign with."""

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from imagen_queue_client.models import Job, WebhookEvent

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """The delivery is not from this API: a header is missing, the signature does not match, or it is stale."""


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not a whsec_<base64> string (GET /v1/webhooks/secret gives it)") from None
    if not key:
        raise ValueError("the secret is empty")
    return key


def sign_webhook(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of a body: HMAC-SHA256 of ``id.timestamp.body``."""
    payload = body.encode() if isinstance(body, str) else bytes(body)
    digest = hmac.new(_secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(
    headers: Mapping[str, str], body: bytes | str, secret: str | bytes, tolerance_s: float = 300
) -> WebhookEvent:
    """Check a delivery's signature and age; the event it carries.

    ``body`` must be the request body exactly as received (bytes, not re-serialized JSON). Deliveries
    are retried with the same ``webhook-id``: a receiver drops one whose id it already handled.
    Raises WebhookVerificationError if the headers are missing, no signature matches, or the timestamp
    is more than ``tolerance_s`` away from now (a replayed delivery).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not a whole number of seconds: {stamp!r}") from None
    if abs(time.time() - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance_s:g} s away from now")
    expected = sign_webhook(secret, msg_id, timestamp, body).encode()
    if not any(hmac.compare_digest(expected, given.encode()) for given in signatures.split(" ") if given):
        raise WebhookVerificationError("no signature matches: wrong secret, or the body was changed")
    try:
        payload: dict[str, Any] = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
    return WebhookEvent(
        id=msg_id,
        type=str(payload.get("type")),
        timestamp=datetime.fromtimestamp(timestamp, UTC),
        job=Job.from_dict(payload["data"]),
        sequence=payload.get("sequence"),
        raw=payload,
    )
