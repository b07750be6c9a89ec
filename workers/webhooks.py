"""Webhook delivery: a task on the ``webhooks`` queue POSTs one outbox event, signed per Standard Webhooks.

Each attempt is logged. A 2xx answer delivers the event; anything else (an error status, a redirect, a
timeout, a refused connection) is retried on ``webhook_retry_schedule_s``, after whose last entry the
event ends failed. A URL the address guard refuses fails at once.

An attempt takes three steps, and only the first and last touch the database, each in a short
transaction: lease the event (``db.webhooks.lease_event``: a token and an expiry past the webhook
timeout), POST it with no transaction or connection held, then record the outcome if the lease still
holds. A duplicate message (a broker redelivery, the sweeper) finds the event leased, settled or not yet
due, and does nothing; a deliverer that dies mid-attempt leaves a lease that expires, and the sweeper
sends the event again.

Image URLs in a payload are presigned at each attempt (``core.webhook_payload``): an event retried hours
after it happened still links to images that open. The ``webhook-id`` is the same on every attempt; the
body differs between attempts only by those URLs, and the signature by its timestamp.
"""

import json
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from standardwebhooks import Webhook

from core.address_guard import BlockedAddress, FetchError, FetchFailed, InvalidUrl, TooLarge, fetch
from core.config import Settings, get_settings
from core.metric_counts import count_events
from core.webhook_payload import with_image_urls
from db import webhooks as webhook_queries
from db.models import Tenant
from db.session import session_scope
from storage.factory import get_store
from storage.object_store import ObjectStore
from workers.dispatch import enqueue_delivery

log = logging.getLogger(__name__)

USER_AGENT = "imagen-queue-webhooks/1"
MAX_RESPONSE_BYTES = 65536
# The sweeper re-enqueues only events overdue by this much: a younger one's message is still on its way.
SWEEP_GRACE_S = 30.0
# A countdown message stays unacknowledged until it runs, and Redis hands unacknowledged messages to
# another worker after its visibility timeout: longer waits are left to the sweeper.
_LONGEST_COUNTDOWN_S = 900.0
# A message that arrives this long before its event is due is a duplicate; the scheduled one follows.
_EARLY_TOLERANCE_S = 1.0
# A lease outlasts the webhook timeout (which bounds the whole HTTP exchange) by this much, for the work
# around the call: a lease that runs out under a live deliverer costs a duplicate delivery, not a loss.
LEASE_MARGIN_S = 30.0
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class LeasedEvent:
    """What one attempt needs of a leased event, read in the leasing transaction."""

    id: uuid.UUID
    url: str
    payload: dict[str, Any]
    image_keys: list[Any]
    secret: str
    lease_token: uuid.UUID


@dataclass(frozen=True)
class AttemptResult:
    """What one POST came to."""

    status_code: int | None
    latency_ms: int
    error: str | None = None
    delivered: bool = False
    hopeless: bool = False  # the URL can never be delivered to: no point in retrying


def message_id(event_id: uuid.UUID) -> str:
    """The ``webhook-id`` of an event: the same on every attempt, so receivers can drop duplicates."""
    return "msg_" + event_id.hex


def event_body(payload: dict[str, Any]) -> str:
    """The JSON body of a payload: compact, keys sorted."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def sign(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The headers of a Standard Webhooks delivery of ``body`` signed with the tenant's ``whsec_`` secret."""
    # standardwebhooks reads the timestamp's wall clock as UTC: hand it UTC (a naive one is taken as UTC).
    utc = timestamp.astimezone(UTC) if timestamp.tzinfo is not None else timestamp.replace(tzinfo=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(utc.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, utc, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


@lru_cache
def _url_signer() -> ObjectStore:
    # Never ensures the bucket: presigning is pure computation, and a delivery needs no store round trip.
    return get_store(get_settings())


def post_event(event: LeasedEvent, settings: Settings) -> AttemptResult:
    """POST ``event`` once, with freshly signed image URLs, through the address guard (checked again now:
    DNS may have changed)."""
    payload = with_image_urls(
        event.payload, event.image_keys, lambda key: _url_signer().presigned_url(key, settings.presign_ttl_s)
    )
    body = event_body(payload)
    headers = sign(event.secret, message_id(event.id), datetime.now(UTC), body)
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        result = fetch(
            event.url,
            allow_private=settings.webhook_allow_private,
            allowed_ports=settings.webhook_allowed_ports,
            max_bytes=MAX_RESPONSE_BYTES,
            timeout_s=settings.webhook_timeout_s,
            method="POST",
            content=body.encode(),
            headers=headers,
            max_redirects=0,
        )
    except (InvalidUrl, BlockedAddress) as exc:
        return AttemptResult(None, elapsed_ms(), f"{exc}; the event will not be retried", hopeless=True)
    except TooLarge:
        # Only a 2xx answer's body is read: the receiver took the event, and its long answer is ignored.
        return AttemptResult(
            None, elapsed_ms(), f"answered 2xx with a body over {MAX_RESPONSE_BYTES} bytes (ignored)", delivered=True
        )
    except FetchFailed as exc:
        if exc.status_code in _REDIRECT_STATUSES:
            error = f"POST {event.url} answered {exc.status_code}, a redirect; webhook redirects are not followed"
            return AttemptResult(exc.status_code, elapsed_ms(), error)
        return AttemptResult(exc.status_code, elapsed_ms(), str(exc))
    except FetchError as exc:  # FetchTimeout, UnresolvableHost: may work next time
        return AttemptResult(None, elapsed_ms(), str(exc))
    return AttemptResult(result.status_code, elapsed_ms(), delivered=True)


def retry_delay_s(attempts: int, schedule: list[float]) -> float | None:
    """Seconds until attempt ``attempts + 1`` (jittered +-20%), or None once the schedule is spent."""
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.8, 1.2)


def deliver_event(event_id: str) -> None:
    """Deliver one outbox event: lease it, POST it, then log the attempt and settle it or schedule the next."""
    settings = get_settings()
    event = _lease(uuid.UUID(event_id), settings)
    if event is None:
        return  # settled, gone, not yet due (a duplicate message), or in another deliverer's hands
    attempted_at = webhook_queries.now()
    result = post_event(event, settings)  # no transaction or connection held meanwhile
    retry_in = _settle(event, result, attempted_at, settings)
    outcome = "delivered" if result.delivered else "http_error" if result.status_code is not None else "error"
    count_events(webhook_attempts=[outcome])
    # After the commit: the next attempt must find the schedule it was sent for.
    if retry_in is not None:
        enqueue_delivery(event.id, countdown=retry_in)


def _lease(event_id: uuid.UUID, settings: Settings) -> LeasedEvent | None:
    """Lease the event for one attempt, in a transaction of its own; None when it is not ours to deliver."""
    with session_scope() as session:
        event = webhook_queries.lease_event(
            session,
            event_id=event_id,
            lease_s=settings.webhook_timeout_s + LEASE_MARGIN_S,
            early_s=_EARLY_TOLERANCE_S,
        )
        if event is None:
            return None
        tenant = session.get(Tenant, event.tenant_id)
        if tenant is None:
            raise LookupError(f"webhook event {event.id} has no tenant {event.tenant_id}")
        assert event.lease_token is not None
        return LeasedEvent(
            id=event.id,
            url=event.url,
            payload=event.payload,
            image_keys=event.image_keys,
            secret=tenant.webhook_secret,
            lease_token=event.lease_token,
        )


def _settle(leased: LeasedEvent, result: AttemptResult, attempted_at: datetime, settings: Settings) -> float | None:
    """Log the attempt and settle the event or schedule its next attempt, if the lease still holds; the
    countdown of the next attempt's message, when one is to be sent now."""
    with session_scope() as session:
        event = webhook_queries.leased_event(session, event_id=leased.id, lease_token=leased.lease_token)
        if event is None:
            # A redelivery reset it, or the lease ran out and another deliverer took it: that one decides.
            log.warning("webhook %s: lease lost during the attempt; its outcome is only logged", leased.id)
            if webhook_queries.get_event(session, event_id=leased.id) is not None:
                webhook_queries.log_attempt(
                    session,
                    event_id=leased.id,
                    status_code=result.status_code,
                    latency_ms=result.latency_ms,
                    error="; ".join(filter(None, [result.error, "lease lost: this attempt settled nothing"])),
                    attempted_at=attempted_at,
                )
            return None
        webhook_queries.record_attempt(
            session,
            event=event,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            attempted_at=attempted_at,
        )
        webhook_queries.release_lease(event)
        delay = None if result.hopeless else retry_delay_s(event.attempts, settings.webhook_retry_schedule_s)
        if result.delivered:
            webhook_queries.mark_delivered(event)
            log.info("webhook %s (%s) delivered to %s", event.id, event.type, event.url)
            return None
        if delay is None:
            webhook_queries.mark_failed(event)
            log.warning("webhook %s failed after %d attempts: %s", event.id, event.attempts, result.error)
            return None
        webhook_queries.schedule_retry(event, delay_s=delay)
        log.info("webhook %s attempt %d: %s; next in %.1f s", event.id, event.attempts, result.error, delay)
        return delay if delay <= _LONGEST_COUNTDOWN_S else None


def sweep_due_webhooks(limit: int = 500) -> int:
    """Enqueue again the deliveries of events overdue by more than the grace time; returns how many."""
    before = webhook_queries.now() - timedelta(seconds=SWEEP_GRACE_S)
    with session_scope() as session:
        event_ids = webhook_queries.due_events(session, before=before, limit=limit)
    sent = sum(enqueue_delivery(event_id) for event_id in event_ids)
    if event_ids:
        log.info("re-enqueued %d of %d overdue webhook deliveries", sent, len(event_ids))
    return sent
