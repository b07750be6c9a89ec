"""Per-tenant limits: requests per minute and jobs in flight answer 429 with Retry-After; revoked keys 401."""

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from cli.services import free_port
from tests.conftest import Client, _new_key
from tests.servers import System, wait_until

# A job that keeps its stage busy for many seconds (and is canceled before it ends).
LONG = {"kind": "generate", "input": {"prompt": "x", "resolution": 64, "stages": {"base": {"steps": 300}}}}


def _tenant(requests_per_minute: int | None = None, max_jobs_in_flight: int | None = None) -> tuple[str, str]:
    """A new tenant with these limits (None: the defaults), and a key of it."""
    from db import tenants
    from db.session import session_scope

    name = f"quota-{uuid.uuid4().hex[:6]}"
    key = _new_key(name)
    with session_scope() as session:
        tenant = tenants.get_tenant(session, name=name)
        assert tenant is not None
        tenants.set_quota(
            session, tenant=tenant, requests_per_minute=requests_per_minute, max_jobs_in_flight=max_jobs_in_flight
        )
    return name, key


@pytest.fixture
def clients(system: System) -> Iterator[list[Client]]:
    """Clients made by a test, closed after it."""
    made: list[Client] = []
    yield made
    for client in made:
        client.http.close()


def test_requests_over_the_rate_are_refused_until_retry_after(system: System, clients: list[Client]) -> None:
    _, key = _tenant(requests_per_minute=5)
    limited = Client(system, key)
    _, other_key = _tenant(requests_per_minute=5)
    other = Client(system, other_key)
    clients += [limited, other]

    for _ in range(5):
        assert limited.http.get("/v1/jobs").status_code == 200
    refused = limited.http.get("/v1/jobs")
    assert refused.status_code == 429, refused.text
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after in range(1, 61)
    error = refused.json()["error"]
    assert error["code"] == "rate_limited" and error["field"] is None
    assert "requests_per_minute is 5" in error["message"]
    # Any /v1 route counts, and a refused request does not use up the allowance of a later one.
    assert limited.http.post("/v1/search", json={"text": "a cat"}).status_code == 429

    # Another tenant's allowance is its own.
    assert all(other.http.get("/v1/jobs").status_code == 200 for _ in range(5))

    # The limit is 5 per minute, spread out: one request more every 12 s, and Retry-After says when.
    assert retry_after <= 12
    time.sleep(retry_after)
    assert limited.http.get("/v1/jobs").status_code == 200
    assert limited.http.get("/v1/jobs").status_code == 429


def test_jobs_over_the_in_flight_quota_wait_until_one_ends(system: System, clients: list[Client]) -> None:
    _, key = _tenant(max_jobs_in_flight=1)
    tenant = Client(system, key)
    clients.append(tenant)

    first = tenant.http.post("/v1/jobs", json=LONG, headers={"Idempotency-Key": "first"})
    assert first.status_code == 202, first.text
    second = tenant.http.post("/v1/jobs", json=LONG)
    assert second.status_code == 429, second.text
    assert int(second.headers["Retry-After"]) >= 1
    error = second.json()["error"]
    assert error["code"] == "quota_exceeded" and error["field"] is None
    assert "max_jobs_in_flight is 1" in error["message"]
    # A retry of the accepted request is not a new job: it gets the job back, quota or not.
    replay = tenant.http.post("/v1/jobs", json=LONG, headers={"Idempotency-Key": "first"})
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]

    assert tenant.http.post(f"/v1/jobs/{first.json()['id']}/cancel").status_code == 200
    assert tenant.wait(first.json()["id"])["status"] == "canceled"
    third = tenant.http.post("/v1/jobs", json=LONG)
    assert third.status_code == 202, third.text
    assert tenant.http.post(f"/v1/jobs/{third.json()['id']}/cancel").status_code == 200
    tenant.wait(third.json()["id"])


def test_a_retry_counts_against_the_in_flight_quota(system: System, clients: list[Client]) -> None:
    _, key = _tenant(max_jobs_in_flight=1)
    tenant = Client(system, key)
    clients.append(tenant)

    first = tenant.http.post("/v1/jobs", json=LONG).json()
    assert tenant.http.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200
    assert tenant.wait(first["id"])["status"] == "canceled"
    second = tenant.http.post("/v1/jobs", json=LONG)
    assert second.status_code == 202, second.text

    # With the one slot taken, bringing the canceled job back would make two in flight.
    refused = tenant.http.post(f"/v1/jobs/{first['id']}/retry")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert tenant.job(first["id"])["status"] == "canceled", "the refused retry changed nothing"

    assert tenant.http.post(f"/v1/jobs/{second.json()['id']}/cancel").status_code == 200
    tenant.wait(second.json()["id"])
    retried = tenant.http.post(f"/v1/jobs/{first['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued", retried.text
    assert tenant.http.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200
    tenant.wait(first["id"])


def test_a_revoked_key_is_refused_within_the_cache_bound(system: System, clients: list[Client]) -> None:
    """The API keeps what it read about a key for IMAGEN_API_KEY_CACHE_S: a revocation takes effect within that."""
    from core.config import get_settings
    from db import tenants
    from db.session import session_scope

    bound_s = get_settings().api_key_cache_s
    assert 0 < bound_s <= 10
    _, key = _tenant()
    holder = Client(system, key)
    clients.append(holder)
    assert holder.http.get("/v1/jobs").status_code == 200  # the key is now in the API's cache
    with session_scope() as session:
        (row,) = tenants.find_live_api_keys(session, key_or_prefix=key)
        tenants.revoke_api_key(session, key=row)
    revoked = time.monotonic()
    refused = wait_until(
        lambda: (response := holder.http.get("/v1/jobs")).status_code == 401 and response,
        bound_s + 2,
        "the revoked key to be refused",
        0.1,
    )
    assert time.monotonic() - revoked <= bound_s + 1
    assert refused.json()["error"]["code"] == "unauthorized"
    # Refused for good: the cache never brings a revoked key back.
    assert all(holder.http.get("/v1/jobs").status_code == 401 for _ in range(5))


def test_a_new_key_works_at_once_and_an_unknown_one_never(system: System, clients: list[Client]) -> None:
    unknown = Client(system, "iq_not-a-key")
    clients.append(unknown)
    assert [unknown.http.get("/v1/jobs").status_code for _ in range(2)] == [401, 401]
    _, key = _tenant()
    fresh = Client(system, key)
    clients.append(fresh)
    assert fresh.http.get("/v1/jobs").status_code == 200


def test_the_rate_limit_lets_requests_through_when_redis_is_down(
    system: System, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from api import quotas
    from core.config import get_settings
    from db import tenants
    from db.session import session_scope

    name, _ = _tenant(requests_per_minute=1)
    nobody_listens = redis.Redis(port=free_port(), socket_connect_timeout=1)
    monkeypatch.setattr(quotas, "_gcra", lambda: nobody_listens.register_script(quotas._GCRA))
    monkeypatch.setattr(quotas, "_redis_skipped_until", 0.0)
    with session_scope() as session:
        tenant = tenants.get_tenant(session, name=name)
        assert tenant is not None
        with caplog.at_level(logging.WARNING, logger="api.quotas"):
            for _ in range(3):
                quotas.enforce_rate_limit(tenant, settings=get_settings())
    # One warning, not one per request: the limiter leaves Redis alone for a while.
    warnings = [r.getMessage() for r in caplog.records if r.name == "api.quotas"]
    assert len(warnings) == 1 and "Redis is unreachable" in warnings[0], warnings


def test_a_priority_above_the_tenant_ceiling_is_a_422_naming_the_field(system: System, clients: list[Client]) -> None:
    from db import tenants
    from db.session import session_scope

    name, key = _tenant()
    with session_scope() as session:
        tenant = tenants.get_tenant(session, name=name)
        assert tenant is not None
        tenants.set_quota(session, tenant=tenant, max_priority=3)
    client = Client(system, key)
    clients.append(client)
    body = {"kind": "generate", "input": {"prompt": "x", "resolution": 64, "stages": {"base": {"steps": 1}}}}
    refused = client.http.post("/v1/jobs", json={**body, "priority": 4})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["field"] == "priority" and "at most 3" in error["message"]
    accepted = client.http.post("/v1/jobs", json={**body, "priority": 3})
    assert accepted.status_code == 202 and accepted.json()["priority"] == 3
    client.wait(accepted.json()["id"])
