"""Requests that hold the API a long time: image fetches, ``Prefer: wait``, event streams and searches.

A second API process serves these tests, with small caps and fetches from loopback allowed; it shares the
system's database and Redis (so the caps it enforces are the ones every replica counts).
"""

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from cli.services import free_port
from tests.conftest import Client, _new_key
from tests.servers import ChildProcess, System, wait_until

CAPS = {
    "IMAGEN_MAX_WAITS_PER_TENANT": "3",
    "IMAGEN_MAX_STREAMS_PER_TENANT": "2",
    "IMAGEN_MAX_SEARCHES_PER_TENANT": "1",
    "IMAGEN_STREAM_KEY_CHECK_S": "1",
    "IMAGEN_IMAGE_URL_ALLOW_PRIVATE": "true",
}
# A base stage this long runs for many seconds on the tiny preset: the job stays in flight meanwhile.
LONG = {"kind": "generate", "input": {"prompt": "x", "resolution": 64, "stages": {"base": {"steps": 300}}}}


@pytest.fixture(scope="module")
def capped_api(system: System) -> Iterator[str]:
    """The URL of an API process with the caps above."""
    port = free_port()
    api = ChildProcess("api-capped", ["api", "--port", str(port)], {**system.env, **CAPS}, system.logs).start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert api.alive(), api.log_tail()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 60, "the capped API to be ready")
        yield url
    finally:
        api.stop()


def _tenant(capped_api: str) -> tuple[httpx.Client, str]:
    """A new tenant's client on the capped API, and its key."""
    key = _new_key(f"capped-{uuid.uuid4().hex[:6]}")
    return httpx.Client(base_url=capped_api, headers={"Authorization": f"Bearer {key}"}, timeout=30), key


def _cancel(http: httpx.Client, job_id: str) -> None:
    assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def test_image_fetches_hold_no_database_connection(capped_api: str, other_client: Client) -> None:
    """Twenty caption submissions whose image URL answers only after 5 s (more than the API's 15 pooled
    database connections) leave the database to everyone else: another tenant's requests answer at once."""
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(5)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http, _ = _tenant(capped_api)
    url = f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    body = {"kind": "caption", "input": {"image": {"url": url}}}
    other = httpx.Client(base_url=capped_api, headers=other_client.http.headers, timeout=30)
    try:
        with ThreadPoolExecutor(20) as pool:
            fetches = [pool.submit(http.post, "/v1/jobs", json=body) for _ in range(20)]
            time.sleep(1.5)  # every fetch has started
            started = time.monotonic()
            answers = [other.get("/v1/jobs").status_code for _ in range(3)]
            took = time.monotonic() - started
            release.set()
            refused = [f.result() for f in fetches]
        assert answers == [200, 200, 200] and took < 3, (answers, took)
        assert all(r.status_code == 422 and r.json()["error"]["field"] == "input.image.url" for r in refused)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        http.close()
        other.close()


def test_waits_past_the_tenant_cap_answer_at_once(capped_api: str) -> None:
    """Three waits hold their answer (the cap); the fourth and fifth are answered at once, without
    ``Preference-Applied``, as if they had not asked to wait."""
    http, _ = _tenant(capped_api)
    job = http.post("/v1/jobs", json=LONG, headers={"Idempotency-Key": "long"}).json()

    def hold() -> tuple[float, httpx.Response]:
        started = time.monotonic()
        response = http.post("/v1/jobs", json=LONG, headers={"Idempotency-Key": "long", "Prefer": "wait=4"})
        return time.monotonic() - started, response

    try:
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(hold) for _ in range(3)]
            time.sleep(1)
            over = [hold() for _ in range(2)]
            held_results = [h.result() for h in held]
        for took, response in held_results:
            assert response.status_code == 202 and response.headers["Preference-Applied"] == "wait=4"
            assert took >= 3.5, took
        for took, response in over:
            assert response.status_code == 202 and "Preference-Applied" not in response.headers
            assert took < 1.5, took
        # The slots were given back: a wait is held again.
        took, response = hold()
        assert response.headers.get("Preference-Applied") == "wait=4" and took >= 3.5
    finally:
        _cancel(http, job["id"])
        http.close()


def test_streams_past_the_cap_are_refused_and_a_revoked_key_ends_them(capped_api: str) -> None:
    from db import tenants
    from db.session import session_scope

    http, key = _tenant(capped_api)
    with session_scope() as session:
        (row,) = tenants.find_live_api_keys(session, key_or_prefix=key)
        spare_key = tenants.create_api_key(session, tenant=row.tenant)[1]
    spare = httpx.Client(base_url=capped_api, headers={"Authorization": f"Bearer {spare_key}"}, timeout=30)
    job = http.post("/v1/jobs", json=LONG).json()
    try:
        with (
            http.stream("GET", f"/v1/jobs/{job['id']}/events") as first,
            spare.stream("GET", f"/v1/jobs/{job['id']}/events") as second,
        ):
            assert first.status_code == second.status_code == 200
            third = http.get(f"/v1/jobs/{job['id']}/events")
            assert third.status_code == 429 and third.headers["Retry-After"], third.text
            assert "event streams" in third.json()["error"]["message"]

            with session_scope() as session:
                (row,) = tenants.find_live_api_keys(session, key_or_prefix=key)
                tenants.revoke_api_key(session, key=row)
            started = time.monotonic()
            text = "".join(first.iter_text())  # ends when the server closes the stream
            assert "event: error" in text and "revoked" in text, text[-300:]
            assert time.monotonic() - started < 5
            # The spare key's stream goes on, and the revoked stream's slot is free again.
            with spare.stream("GET", f"/v1/jobs/{job['id']}/events") as again:
                assert again.status_code == 200
    finally:
        _cancel(spare, job["id"])
        spare.close()
        http.close()


def test_searches_past_the_tenant_cap_are_refused(capped_api: str) -> None:
    """The cap counts the searches of every replica: a slot held elsewhere (here, taken directly) is seen."""
    from api.long_requests import release_slot, take_slot
    from db import tenants
    from db.session import session_scope

    http, key = _tenant(capped_api)
    with session_scope() as session:
        (row,) = tenants.find_live_api_keys(session, key_or_prefix=key)
        tenant_id = row.tenant_id
    try:
        assert http.post("/v1/search", json={"text": "a cat"}).status_code == 200
        slot = take_slot("search", tenant_id, limit=1, ttl_s=30)
        assert slot is not None and slot.counted
        refused = http.post("/v1/search", json={"text": "a cat"})
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1", refused.text
        release_slot(slot)
        assert http.post("/v1/search", json={"text": "a cat"}).status_code == 200
    finally:
        http.close()
