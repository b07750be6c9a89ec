"""Clients of the package under test, each for a fresh tenant of the running system."""

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from imagen_queue_client import Client
from tests.servers import System


def new_key(tenant: str, **quota: int) -> str:
    """A key of a new tenant, with its own limits (``requests_per_minute=...``) set before the key is used."""
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        row = tenants.get_or_create_tenant(session, name=tenant)
        if quota:
            tenants.set_quota(
                session,
                tenant=row,
                requests_per_minute=quota.get("requests_per_minute", tenants.UNSET),
                max_jobs_in_flight=quota.get("max_jobs_in_flight", tenants.UNSET),
                max_priority=tenants.UNSET,
            )
        _, key = tenants.create_api_key(session, tenant=row)
    return key


class CountingTransport(httpx.HTTPTransport):
    """An ordinary transport that remembers the method and path of every request it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return super().handle_request(request)


@pytest.fixture
def transport() -> CountingTransport:
    return CountingTransport()


@pytest.fixture
def api(system: System, transport: CountingTransport) -> Iterator[Client]:
    """A client of a tenant of its own (so that listing shows only this test's jobs)."""
    with Client(system.api_url, new_key(f"client-{uuid.uuid4().hex[:8]}"), transport=transport) as client:
        yield client


class Receiver:
    """A loopback webhook receiver that keeps every request's headers and exact body."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()
