"""Webhook delivery through the real worker process, Postgres and Redis, to a loopback receiver."""

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.conftest import FAST, Client
from tests.servers import System, wait_until

# The system's schedule (tests/servers.py): three retries after the first attempt, then failed.
SCHEDULE_S = [0.2, 0.4, 0.8]
ATTEMPTS = 1 + len(SCHEDULE_S)


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    wall: float


class Receiver:
    """A webhook receiver on 127.0.0.1 whose answers each test scripts."""

    def __init__(self) -> None:
        self.statuses: list[int] = []  # answered in order, then ``then``
        self.then = 200
        self.delay_s = 0.0
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, *statuses: int, then: int = 200, delay_s: float = 0.0) -> None:
        with self._lock:
            self.statuses, self.then, self.delay_s = list(statuses), then, delay_s

    def received(self, path: str = "/hook") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, count: int, timeout_s: float = 30) -> list[Request]:
        return wait_until(
            lambda: (got := self.received()) and len(got) >= count and got, timeout_s, f"{count} deliveries"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _next(self, request: Request) -> tuple[int, float]:
        with self._lock:
            self.requests.append(request)
            status = self.statuses.pop(0) if self.statuses else self.then
            return status, self.delay_s

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, delay_s = receiver._next(Request(self.path, headers, body, time.monotonic(), time.time()))
                time.sleep(delay_s)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", receiver.url("/landed"))
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up before the (delayed) answer


@pytest.fixture(scope="module")
def hooks(system: System) -> Any:
    """workers.webhooks, imported once the system's settings are in this process's environment."""
    from workers import webhooks
    from workers.celery_app import app

    assert app.conf.broker_url == system.env["IMAGEN_REDIS_URL"], "workers.celery_app was imported too early"
    return webhooks


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@dataclass(frozen=True)
class Outbox:
    event_id: uuid.UUID
    job_id: uuid.UUID
    secret: str
    payload: dict[str, Any]


def _new_event(url: str, type: str = "job.succeeded") -> Outbox:
    """A tenant, an ended job whose webhook points at ``url``, and one event of it in the outbox."""
    from db import jobs, tenants
    from db.models import JobStatus
    from db.session import session_scope
    from db.webhooks import record_event

    with session_scope() as session:
        tenant = tenants.get_or_create_tenant(session, name=f"hooks-{uuid.uuid4().hex[:8]}")
        job = jobs.create_job(
            session,
            tenant_id=tenant.id,
            kind="generate",
            preset="tiny",
            input={"prompt": "a corgi"},
            stages=[("encode_text", "text")],
        )
        # Ended, so that the job sweeper never runs it: only the webhook is under test.
        jobs.finish_job(job, JobStatus.SUCCEEDED)
        job.webhook = {"url": url, "events": ["completed"]}
        payload = {"type": type, "data": {"id": str(job.id), "status": "succeeded", "prompt": "a corgi 🐕"}}
        event = record_event(session, job=job, type=type, payload=payload)
        assert event is not None
        return Outbox(event.id, job.id, tenant.webhook_secret, event.payload)


@dataclass(frozen=True)
class Delivery:
    status: str
    attempts: int
    delivered: bool
    log: list[tuple[int | None, str | None, int]]  # (status code, error, latency ms) per attempt
    attempted_at: list[float]


def _delivery(job_id: uuid.UUID) -> Delivery:
    from db.session import session_scope
    from db.webhooks import list_deliveries

    with session_scope() as session:
        (event,) = list_deliveries(session, job_id=job_id)
        return Delivery(
            event.status,
            event.attempts,
            event.delivered_at is not None,
            [(a.status_code, a.error, a.latency_ms) for a in event.attempt_log],
            [a.attempted_at.timestamp() for a in event.attempt_log],
        )


def _wait_settled(job_id: uuid.UUID, attempts_logged: int | None = None, timeout_s: float = 60) -> Delivery:
    def settled() -> Delivery | None:
        delivery = _delivery(job_id)
        if delivery.status == "pending":
            return None
        if attempts_logged is not None and len(delivery.log) < attempts_logged:
            return None
        return delivery

    return wait_until(settled, timeout_s, f"the webhook of job {job_id} to settle", 0.1)


def test_delivery_is_signed_per_standard_webhooks(hooks: Any, receiver: Receiver) -> None:
    outbox = _new_event(receiver.url())
    assert hooks.enqueue_delivery(outbox.event_id)

    (request,) = receiver.wait_for(1)
    assert request.headers["webhook-id"] == f"msg_{outbox.event_id.hex}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "imagen-queue-webhooks/1"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert Webhook(outbox.secret).verify(request.body, request.headers) == outbox.payload

    tampered = request.body.replace(b"succeeded", b"failed")
    assert tampered != request.body
    with pytest.raises(WebhookVerificationError):
        Webhook(outbox.secret).verify(tampered, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 8).verify(request.body, request.headers)

    delivery = _wait_settled(outbox.job_id)
    assert (delivery.status, delivery.attempts, delivery.delivered) == ("delivered", 1, True)
    assert [code for code, _, _ in delivery.log] == [200]


def test_failing_receiver_gets_retries_on_the_schedule_then_the_event(hooks: Any, receiver: Receiver) -> None:
    receiver.answer(500, 500, 500, then=200)
    outbox = _new_event(receiver.url())
    assert hooks.enqueue_delivery(outbox.event_id)

    delivery = _wait_settled(outbox.job_id)
    assert (delivery.status, delivery.attempts, delivery.delivered) == ("delivered", 4, True)
    assert [code for code, _, _ in delivery.log] == [500, 500, 500, 200]
    assert all("500" in (error or "") for _, error, _ in delivery.log[:3]) and delivery.log[3][1] is None

    requests = receiver.received()
    assert len(requests) == 4
    assert {r.headers["webhook-id"] for r in requests} == {f"msg_{outbox.event_id.hex}"}
    for request in requests:
        Webhook(outbox.secret).verify(request.body, request.headers)
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    for gap, planned in zip(gaps, SCHEDULE_S, strict=True):
        assert gap >= planned * 0.8 - 0.02, (gaps, SCHEDULE_S)


def test_unanswering_receiver_ends_failed_with_every_attempt_logged(hooks: Any, receiver: Receiver) -> None:
    receiver.answer(then=200, delay_s=2.5)  # past IMAGEN_WEBHOOK_TIMEOUT_S=1
    outbox = _new_event(receiver.url())
    assert hooks.enqueue_delivery(outbox.event_id)

    delivery = _wait_settled(outbox.job_id)
    assert (delivery.status, delivery.attempts, delivery.delivered) == ("failed", ATTEMPTS, False)
    assert len(delivery.log) == ATTEMPTS
    for code, error, latency_ms in delivery.log:
        assert code is None
        assert error is not None and "did not finish within 1 s" in error
        assert 900 <= latency_ms < 2500


def test_redirect_is_not_followed_and_counts_as_a_failure(hooks: Any, receiver: Receiver) -> None:
    receiver.answer(then=302)
    outbox = _new_event(receiver.url())
    assert hooks.enqueue_delivery(outbox.event_id)

    delivery = _wait_settled(outbox.job_id)
    assert (delivery.status, delivery.attempts) == ("failed", ATTEMPTS)
    assert [code for code, _, _ in delivery.log] == [302] * ATTEMPTS
    assert all("redirects are not followed" in (error or "") for _, error, _ in delivery.log)
    assert len(receiver.received()) == ATTEMPTS
    assert receiver.received("/landed") == []


def test_refused_connection_is_retried_and_an_unusable_url_is_not(hooks: Any, receiver: Receiver) -> None:
    closed = Receiver()
    closed.close()  # nothing listens on its port any more
    refused = _new_event(closed.url())
    unusable = _new_event(f"ftp://127.0.0.1:{receiver.port}/hook")
    assert hooks.enqueue_delivery(refused.event_id)
    assert hooks.enqueue_delivery(unusable.event_id)

    delivery = _wait_settled(refused.job_id)
    assert (delivery.status, len(delivery.log)) == ("failed", ATTEMPTS)
    assert all(code is None and error for code, error, _ in delivery.log)

    delivery = _wait_settled(unusable.job_id)
    assert (delivery.status, len(delivery.log)) == ("failed", 1)
    ((code, error, _),) = delivery.log
    assert code is None and error is not None and "scheme 'ftp'" in error
    assert receiver.received() == []


def test_record_event_honours_the_events_filter(hooks: Any) -> None:
    from db import jobs, tenants
    from db.session import new_session
    from db.webhooks import record_event

    session = new_session()
    try:
        tenant = tenants.get_or_create_tenant(session, name=f"hooks-{uuid.uuid4().hex[:8]}")
        job = jobs.create_job(
            session, tenant_id=tenant.id, kind="generate", preset="tiny", input={}, stages=[("encode_text", "text")]
        )
        types = ["job.started", "job.stage", "job.succeeded", "job.failed", "job.canceled"]

        def recorded(webhook: dict[str, Any] | None) -> list[str]:
            job.webhook = webhook
            kept = [t for t in types if record_event(session, job=job, type=t, payload={"type": t}) is not None]
            return kept

        assert recorded(None) == []
        assert recorded({"url": "https://example.com/h", "events": ["started"]}) == ["job.started"]
        assert recorded({"url": "https://example.com/h", "events": ["stage"]}) == ["job.stage"]
        assert recorded({"url": "https://example.com/h", "events": ["completed"]}) == types[2:]
        assert recorded({"url": "https://example.com/h", "events": ["started", "completed"]}) == [types[0], *types[2:]]
        assert recorded({"url": "https://example.com/h", "events": []}) == types
        assert recorded({"url": "https://example.com/h"}) == types

        event = record_event(session, job=job, type="job.failed", payload={"type": "job.failed"})
        assert event is not None
        assert (event.url, event.tenant_id, event.job_id, event.status, event.attempts) == (
            "https://example.com/h",
            tenant.id,
            job.id,
            "pending",
            0,
        )
    finally:
        session.rollback()  # nothing of this reaches the outbox
        session.close()


def test_redelivery_after_failure_delivers_again_on_a_fresh_schedule(hooks: Any, receiver: Receiver) -> None:
    from db.session import session_scope
    from db.webhooks import get_event, reset_for_redelivery

    receiver.answer(then=503)
    outbox = _new_event(receiver.url())
    assert hooks.enqueue_delivery(outbox.event_id)
    assert _wait_settled(outbox.job_id).status == "failed"

    # Two more failures would end a spent schedule at once; a fresh one survives them.
    receiver.answer(503, 503, then=200)
    with session_scope() as session:
        event = get_event(session, event_id=outbox.event_id, for_update=True)
        assert event is not None
        reset_for_redelivery(event)
    assert hooks.enqueue_delivery(outbox.event_id)

    delivery = _wait_settled(outbox.job_id)
    assert (delivery.status, delivery.attempts, delivery.delivered) == ("delivered", 3, True)
    assert [code for code, _, _ in delivery.log] == [503] * ATTEMPTS + [503, 503, 200]
    assert delivery.attempted_at == sorted(delivery.attempted_at)
    assert {r.headers["webhook-id"] for r in receiver.received()} == {f"msg_{outbox.event_id.hex}"}


def test_duplicate_messages_deliver_once(hooks: Any, receiver: Receiver) -> None:
    outbox = _new_event(receiver.url())
    for _ in range(3):
        assert hooks.enqueue_delivery(outbox.event_id)

    delivery = _wait_settled(outbox.job_id)
    time.sleep(1.0)  # room for the duplicates to run, and to find the event delivered
    assert len(receiver.received()) == 1
    assert _delivery(outbox.job_id).log == delivery.log and len(delivery.log) == 1


def test_sweeper_enqueues_events_whose_message_was_lost(hooks: Any, receiver: Receiver) -> None:
    from db.models import WebhookEvent
    from db.session import session_scope
    from db.webhooks import now

    outbox = _new_event(receiver.url())  # never enqueued: as if the broker was down
    recent = _new_event(receiver.url("/recent"))
    with session_scope() as session:
        event = session.get(WebhookEvent, outbox.event_id)
        assert event is not None
        event.next_attempt_at = now() - timedelta(minutes=2)

    assert hooks.sweep_due_webhooks() >= 1
    assert _wait_settled(outbox.job_id).status == "delivered"
    # An event due only just now may still have its message on the way: the sweeper leaves it alone.
    assert receiver.received("/recent") == []
    assert _delivery(recent.job_id).status == "pending"
    with session_scope() as session:
        event = session.get(WebhookEvent, recent.event_id)
        assert event is not None
        session.delete(event)  # so no later sweep delivers it to a closed receiver


def test_stalled_receivers_hold_up_neither_job_completion_nor_other_deliveries(
    hooks: Any, receiver: Receiver, client: Client
) -> None:
    from datetime import datetime

    def seconds(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    client.wait(client.submit(resolution=64, stages=FAST)["id"])  # models loaded: the job below runs at once
    stalled = Receiver()
    stalled.answer(then=200, delay_s=5)  # every attempt runs into the 1 s timeout: four attempts each
    try:
        for _ in range(12):
            assert hooks.enqueue_delivery(_new_event(stalled.url()).event_id)
        stalled.wait_for(4, timeout_s=10)

        # Another tenant's job is finished as soon as its last stage is: finalize waits on no delivery.
        done = client.wait(client.submit(resolution=64, stages=FAST)["id"])
        assert done["status"] == "succeeded"
        finalize_s = seconds(done["finished_at"]) - max(seconds(s["finished_at"]) for s in done["stages"])
        assert finalize_s < 1.0, finalize_s

        # And another receiver gets its event at once, while stalled ones are still being retried (a fresh
        # dozen: on a slow machine the first may have spent their attempts while the job ran).
        for _ in range(12):
            assert hooks.enqueue_delivery(_new_event(stalled.url()).event_id)
        stalled.wait_for(len(stalled.received()) + 4, timeout_s=10)
        outbox = _new_event(receiver.url())
        sent = time.monotonic()
        assert hooks.enqueue_delivery(outbox.event_id)
        (request,) = receiver.wait_for(1, timeout_s=10)
        assert request.at - sent < 1.0, request.at - sent
        stalled.wait_for(24 * ATTEMPTS, timeout_s=60)
        assert max(r.at for r in stalled.received()) > request.at, "the stall was over before the check"
    finally:
        stalled.close()


def test_a_delivery_in_flight_holds_no_lock_and_no_transaction(hooks: Any, receiver: Receiver) -> None:
    from sqlalchemy import text

    from db.models import WebhookEvent
    from db.session import session_scope

    receiver.answer(then=200, delay_s=0.7)  # under the 1 s timeout: delivered, after a while
    outbox = _new_event(receiver.url())
    assert hooks.enqueue_delivery(outbox.event_id)
    receiver.wait_for(1)

    with session_scope() as session:
        # The receiver holds the request: the row is free to lock, and no connection sits in a transaction.
        row = session.get(WebhookEvent, outbox.event_id, with_for_update={"nowait": True}, populate_existing=True)
        assert row is not None and row.status == "pending" and row.lease_token is not None
        idle = session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND state LIKE 'idle in transaction%' AND xact_start < now() - interval '0.3 seconds'"
            )
        ).scalar_one()
        assert idle == 0
        session.rollback()

    delivery = _wait_settled(outbox.job_id)
    assert (delivery.status, [code for code, _, _ in delivery.log]) == ("delivered", [200])


def test_the_lease_of_a_deliverer_that_died_expires_and_the_event_is_delivered(hooks: Any, receiver: Receiver) -> None:
    from db.models import WebhookEvent
    from db.session import session_scope
    from db.webhooks import lease_event, now

    outbox = _new_event(receiver.url())
    with session_scope() as session:
        # A deliverer leased the event and died before its POST: long overdue, but held for 3 s more.
        event = session.get(WebhookEvent, outbox.event_id)
        assert event is not None
        event.next_attempt_at = now() - timedelta(minutes=2)
        session.flush()
        leased = lease_event(session, event_id=outbox.event_id, lease_s=3, early_s=0)
        assert leased is not None and leased.lease_expires_at is not None
        expires = leased.lease_expires_at.timestamp()
    assert hooks.enqueue_delivery(outbox.event_id)  # a duplicate message: finds the event leased
    time.sleep(1.5)  # the beat's sweeper runs every second, and leaves a held event alone
    assert receiver.received() == []

    (request,) = receiver.wait_for(1, timeout_s=30)  # the beat's sweeper, once the lease ran out
    assert request.wall >= expires - 0.05, (request.wall, expires)
    delivery = _wait_settled(outbox.job_id)
    assert (delivery.status, [code for code, _, _ in delivery.log]) == ("delivered", [200])


def test_a_redelivery_during_an_attempt_wins_over_its_outcome(hooks: Any, receiver: Receiver) -> None:
    from db.session import session_scope
    from db.webhooks import get_event, reset_for_redelivery

    receiver.answer(then=200, delay_s=0.7)
    outbox = _new_event(receiver.url())
    assert hooks.enqueue_delivery(outbox.event_id)
    receiver.wait_for(1)

    started = time.monotonic()
    with session_scope() as session:
        event = get_event(session, event_id=outbox.event_id, for_update=True)
        assert event is not None and event.status == "pending"
        reset_for_redelivery(event)
    assert time.monotonic() - started < 0.5, "the reset waited for the attempt in flight"
    assert hooks.enqueue_delivery(outbox.event_id)

    delivery = _wait_settled(outbox.job_id, attempts_logged=2)
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert len(receiver.received()) == 2
    # The attempt that was in flight is logged, marked as one that settled nothing.
    assert [code for code, _, _ in delivery.log] == [200, 200]
    assert "lease lost" in (delivery.log[0][1] or "") and delivery.log[1][1] is None


def test_each_attempt_carries_freshly_signed_image_urls(hooks: Any, receiver: Receiver, client: Client) -> None:
    import json
    from datetime import UTC, datetime
    from urllib.parse import parse_qs, urlsplit

    import httpx

    receiver.answer(500, 500, 500, then=200)
    body = {
        "kind": "generate",
        "input": {"prompt": "a corgi", "resolution": 64, "stages": FAST},
        "webhook": {"url": receiver.url(), "events": ["completed"]},
    }
    job = client.wait(client.http.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded"
    requests = receiver.wait_for(ATTEMPTS)
    secret = client.http.get("/v1/webhooks/secret").json()["secret"]

    def image_url(payload: dict[str, Any]) -> str:
        (image,) = payload["data"]["output"]["images"]
        return str(image["url"])

    def signed_at(url: str) -> float:
        (amz_date,) = parse_qs(urlsplit(url).query)["X-Amz-Date"]
        return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()

    def without_urls(payload: dict[str, Any]) -> str:
        payload["data"]["output"]["images"][0]["url"] = None
        for stage in payload["data"]["stages"]:
            for output in stage["outputs"]:
                output["url"] = None
        return json.dumps(payload, sort_keys=True)

    payloads = [Webhook(secret).verify(r.body, r.headers) for r in requests]
    urls = [image_url(p) for p in payloads]
    for request, url in zip(requests, urls, strict=True):
        assert abs(signed_at(url) - request.wall) < 3, "the URL was not signed at its attempt"
    # Signatures carry whole seconds: attempts 0.2 s apart may share one, the first and last never do.
    assert signed_at(urls[-1]) > signed_at(urls[0]) and urls[-1] != urls[0]
    # One event: the same webhook-id, and the same body but for the URLs.
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({without_urls(p) for p in payloads}) == 1
    assert httpx.get(urls[-1]).content.startswith(b"\x89PNG")

    from db.session import session_scope
    from db.webhooks import list_deliveries

    with session_scope() as session:
        (event,) = list_deliveries(session, job_id=uuid.UUID(job["id"]))
        assert event.payload["data"]["output"]["images"][0]["url"] is None  # the outbox keeps keys, not URLs
        assert event.image_keys


def test_a_jobs_events_are_numbered_in_order(hooks: Any, receiver: Receiver, client: Client) -> None:
    body = {
        "kind": "generate",
        "input": {"prompt": "a corgi", "resolution": 256, "stages": FAST},
        "webhook": {"url": receiver.url()},
    }
    job = client.wait(client.http.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded"
    count = 1 + len(job["stages"]) + 1  # started, one per stage, succeeded
    requests = receiver.wait_for(count)
    secret = client.http.get("/v1/webhooks/secret").json()["secret"]

    by_sequence = sorted((Webhook(secret).verify(r.body, r.headers) for r in requests), key=lambda p: p["sequence"])
    assert [p["sequence"] for p in by_sequence] == list(range(1, count + 1))
    assert [p["type"] for p in by_sequence] == ["job.started", *["job.stage"] * len(job["stages"]), "job.succeeded"]
    assert [p["stage"] for p in by_sequence[1:-1]] == [s["name"] for s in job["stages"]]

    deliveries = client.http.get(f"/v1/jobs/{job['id']}/deliveries").json()["items"]
    assert [d["sequence"] for d in deliveries] == list(range(count, 0, -1))  # newest first
    sequence_of = {r.headers["webhook-id"]: Webhook(secret).verify(r.body, r.headers)["sequence"] for r in requests}
    assert all(sequence_of[d["webhook_id"]] == d["sequence"] for d in deliveries)


def test_concurrent_recorders_take_distinct_numbers(hooks: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import delete

    from db import jobs
    from db.models import WebhookEvent
    from db.session import session_scope
    from db.webhooks import record_event

    closed = Receiver()
    closed.close()
    outbox = _new_event(closed.url())  # sequence 1; never enqueued, and nothing listens there
    barrier = threading.Barrier(6)

    def record(_: int) -> int:
        with session_scope() as session:
            # The job is read without a lock, as a caller that forgot one would.
            job = jobs.get_job(session, job_id=outbox.job_id)
            assert job is not None
            barrier.wait()
            event = record_event(session, job=job, type="job.succeeded", payload={"type": "job.succeeded"})
            assert event is not None
            return event.sequence

    try:
        with ThreadPoolExecutor(6) as pool:
            numbers = list(pool.map(record, range(6)))
        assert outbox.payload["sequence"] == 1
        assert sorted(numbers) == list(range(2, 8))
    finally:
        with session_scope() as session:
            session.execute(delete(WebhookEvent).where(WebhookEvent.job_id == outbox.job_id))
