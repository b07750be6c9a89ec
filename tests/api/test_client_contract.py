"""The client contract: signed webhooks, live progress over SSE, Prefer: wait, Idempotency-Key."""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import FAST, Client
from tests.servers import wait_until


class Receiver:
    """A loopback webhook receiver that records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str) -> list[dict[str, Any]]:
        """Verified payloads, one per webhook-id (a retried delivery counts once)."""
        seen: dict[str, dict[str, Any]] = {}
        for headers, body in list(self.requests):
            payload = Webhook(secret).verify(body, headers)
            seen.setdefault(headers["webhook-id"], payload)
        return list(seen.values())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _secret(client: Client) -> str:
    secret = client.http.get("/v1/webhooks/secret").json()["secret"]
    assert secret.startswith("whsec_")
    return str(secret)


def test_webhooks_are_signed_and_each_event_arrives_once(client: Client, receiver: Receiver) -> None:
    body = {
        "kind": "generate",
        "input": {"prompt": "a corgi", "seed": 1, "resolution": 256, "stages": FAST},
        "webhook": {"url": receiver.url},
    }
    job = client.http.post("/v1/jobs", json=body).json()
    assert client.wait(job["id"])["status"] == "succeeded"
    secret = _secret(client)
    events = wait_until(lambda: (e := receiver.events(secret)) and len(e) >= 5 and e, 30, "five webhook events")
    # Deliveries run side by side on the CPU worker, so they may arrive out of order: put them in the order
    # of the job snapshots they carry (stages finished, then the final event).
    events.sort(key=lambda e: (sum(s["status"] == "succeeded" for s in e["data"]["stages"]), e["type"]))
    assert [e["type"] for e in events] == ["job.started", "job.stage", "job.stage", "job.stage", "job.succeeded"]
    assert [e["stage"] for e in events if e["type"] == "job.stage"] == ["encode_text", "base_64", "sr_256"]
    assert all(e["data"]["id"] == job["id"] for e in events)
    assert events[-1]["data"]["status"] == "succeeded" and events[-1]["data"]["output"]["images"]
    assert all(len(body) < 20_000 for _, body in receiver.requests), "payloads carry URLs, never image bytes"

    headers, raw = receiver.requests[0]
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(secret).verify(raw.replace(b"job.", b"jab."), headers)

    deliveries = client.http.get(f"/v1/jobs/{job['id']}/deliveries").json()["items"]
    assert len(deliveries) == 5 and {d["status"] for d in deliveries} == {"delivered"}
    assert all(d["attempts"][0]["status_code"] == 200 and d["attempts"][0]["latency_ms"] >= 0 for d in deliveries)


def test_webhook_events_filter(client: Client, receiver: Receiver) -> None:
    body = {
        "kind": "generate",
        "input": {"prompt": "a corgi", "resolution": 64, "stages": FAST},
        "webhook": {"url": receiver.url, "events": ["completed"]},
    }
    job = client.http.post("/v1/jobs", json=body).json()
    assert client.wait(job["id"])["status"] == "succeeded"
    secret = _secret(client)
    wait_until(lambda: receiver.events(secret), 30, "the completed event")
    time.sleep(1.0)  # anything else would have arrived by now
    assert [e["type"] for e in receiver.events(secret)] == ["job.succeeded"]


@pytest.mark.parametrize(
    ("webhook", "field"),
    [
        ({"url": "ftp://example.com/hook"}, "webhook.url"),
        ({"url": "https://example.com/hook", "events": ["finished"]}, "webhook.events.0"),
        ({"url": "https://example.com/hook", "secret": "x"}, "webhook.secret"),
    ],
)
def test_bad_webhook_is_a_422(client: Client, webhook: dict[str, Any], field: str) -> None:
    body = {"kind": "generate", "input": {"prompt": "a corgi"}, "webhook": webhook}
    response = client.http.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def _sse(client: Client, job_id: str, last_event_id: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, event_id, name = [], "", ""
    with client.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((event_id, name, json.loads(line[6:])))
    return events


def test_sse_progress_rises_per_stage_ends_with_done_and_resumes(client: Client) -> None:
    job = client.submit(seed=2, resolution=256, stages={"base": {"steps": 12}, "sr256": {"steps": 6}})
    events = _sse(client, job["id"])
    assert events[-1][1] == "done" and events[-1][2]["status"] == "succeeded"
    progress: dict[str, list[float]] = {}
    for _, name, data in events:
        if name == "progress":
            progress.setdefault(data["stage"], []).append(data["progress"])
    assert {"base_64", "sr_256"} <= set(progress)
    for stage, values in progress.items():
        assert values == sorted(values) and values[-1] == 1.0, (stage, values)
    assert ("status", {"status": "running"}) in [(n, d) for _, n, d in events]

    # A reconnect from the middle gets exactly what came after, nothing twice.
    middle = len(events) // 2
    rest = _sse(client, job["id"], last_event_id=events[middle][0])
    assert rest == events[middle + 1 :]
    # A finished job's stream replays to its end and closes.
    assert _sse(client, job["id"]) == events


def test_prefer_wait(client: Client) -> None:
    body = {"kind": "generate", "input": {"prompt": "a corgi", "resolution": 64, "stages": FAST}}
    quick = client.http.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})
    assert quick.status_code == 200, quick.text
    assert quick.json()["status"] == "succeeded" and quick.json()["output"]["images"]

    slow_body = {
        "kind": "generate",
        "input": {"prompt": "a corgi", "resolution": 64, "stages": {"base": {"steps": 300}}},
    }
    start = time.monotonic()
    slow = client.http.post("/v1/jobs", json=slow_body, headers={"Prefer": "wait=1"})
    assert slow.status_code == 202 and slow.json()["status"] in ("queued", "running")
    assert 0.9 < time.monotonic() - start < 10
    client.http.post(f"/v1/jobs/{slow.json()['id']}/cancel")

    too_long = client.http.post("/v1/jobs", json=body, headers={"Prefer": "wait=61"})
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "Prefer"


def test_idempotency_key(client: Client) -> None:
    key = f"req-{uuid.uuid4()}"
    body = {
        "kind": "generate",
        "input": {"prompt": "a corgi", "resolution": 64, "stages": FAST},
        "metadata": {"marker": key},
    }
    results: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=client.system.api_url, headers=client.http.headers, timeout=30) as http:
            results.append(http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [202] * 4, [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1, "concurrent requests with one key make one job"

    again = client.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert again.json()["id"] == results[0].json()["id"]
    other = client.http.post("/v1/jobs", json={**body, "priority": 9}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"
    listed = client.http.get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert sum(1 for j in listed if j["metadata"].get("marker") == key) == 1
    client.wait(results[0].json()["id"])


def test_a_receiver_that_never_answers_does_not_delay_the_job(client: Client) -> None:
    hung = threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hung.wait(10)  # longer than the delivery timeout (1 s in the test system)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        body = {
            "kind": "generate",
            "input": {"prompt": "a corgi", "resolution": 256, "stages": FAST},
            "webhook": {"url": url},
        }
        job = client.wait(client.http.post("/v1/jobs", json=body).json()["id"])
        assert job["status"] == "succeeded"

        # Deliveries run on the webhooks worker, not between the stages: the job took no longer than its
        # stages plus their queue hand-offs, while every delivery attempt hung for a whole timeout.
        def seconds(value: str) -> float:
            return datetime.fromisoformat(value).timestamp()

        busy = sum(s["duration_ms"] for s in job["stages"]) / 1000
        wall = seconds(job["finished_at"]) - seconds(job["created_at"])
        assert wall < busy + 2.0, (wall, busy)

        def all_failed() -> list[dict[str, Any]] | None:
            items = client.http.get(f"/v1/jobs/{job['id']}/deliveries").json()["items"]
            return items if len(items) == 5 and all(d["status"] == "failed" for d in items) else None

        deliveries = wait_until(all_failed, 60, "every delivery to end failed")
        for delivery in deliveries:
            assert len(delivery["attempts"]) == 4
            assert all(a["status_code"] is None and a["error"] for a in delivery["attempts"])
    finally:
        hung.set()
        server.shutdown()
        server.server_close()


def test_waiting_clients_hold_no_database_connection(client: Client, other_client: Client) -> None:
    """Twenty clients holding ``Prefer: wait`` on a long job (more than the API's 15 pooled database
    connections) leave the database to everyone else: another tenant's requests answer at once."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"kind": "generate", "input": {"prompt": "x", "resolution": 64, "stages": {"base": {"steps": 300}}}}
    job = client.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "held"}).json()

    def hold() -> int:
        headers = {"Idempotency-Key": "held", "Prefer": "wait=8"}
        return client.http.post("/v1/jobs", json=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(20) as pool:
        holds = [pool.submit(hold) for _ in range(20)]
        time.sleep(2)  # every wait has started
        started = time.monotonic()
        answers = [other_client.http.get("/v1/jobs", timeout=30).status_code for _ in range(3)]
        took = time.monotonic() - started
        assert [h.result() for h in holds] == [202] * 20, "each wait ran out and answered with the job"
    assert answers == [200, 200, 200] and took < 3, (answers, took)
    assert client.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    client.wait(job["id"])
