"""/admin: the operators' dashboard, driven over HTTP like a browser would (cookie, forms, CSRF)."""

import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FAST, Client, _new_key
from tests.servers import System, wait_until


def _new_admin_key() -> str:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        row = tenants.get_or_create_tenant(session, name=f"ops-{uuid.uuid4().hex[:6]}")
        _, key = tenants.create_api_key(session, tenant=row, is_admin=True)
    return key


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


@pytest.fixture(scope="module")
def admin(system: System) -> Iterator[httpx.Client]:
    """A browser-like client signed in to the dashboard with an admin key."""
    browser = httpx.Client(base_url=system.api_url, timeout=30)
    response = browser.post("/admin/login", data={"key": _new_admin_key()})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/admin"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    yield browser
    browser.close()


def test_login_refuses_a_non_admin_or_unknown_key(system: System) -> None:
    with httpx.Client(base_url=system.api_url, timeout=30) as browser:
        assert 'id="login-key"' in browser.get("/admin/login").text
        for key in (_new_key(f"plain-{uuid.uuid4().hex[:6]}"), "iq_not-a-key"):
            response = browser.post("/admin/login", data={"key": key})
            assert response.status_code == 401
            assert 'id="login-error"' in response.text
            assert "set-cookie" not in response.headers
        page = browser.get("/admin/jobs")
        assert page.status_code == 303 and page.headers["location"] == "/admin/login"


def test_a_forged_non_ascii_cookie_or_csrf_token_is_refused_not_a_500(admin: httpx.Client, system: System) -> None:
    forged = "k.9999999999.caf\u00e9".encode("latin-1")
    page = httpx.get(f"{system.api_url}/admin/jobs", headers={"Cookie": b"imagen_admin=" + forged}, timeout=30)
    assert page.status_code == 303 and page.headers["location"] == "/admin/login"
    job_id = "00000000-0000-0000-0000-000000000000"
    refused = admin.post(f"/admin/jobs/{job_id}/cancel", data={"csrf": "caf\u00e9"})
    assert refused.status_code == 403


def test_sign_in_attempts_are_throttled_per_address(system: System) -> None:
    # From an address of its own on loopback, so the other tests' sign-ins keep their allowance.
    transport = httpx.HTTPTransport(local_address="127.0.0.9")
    with httpx.Client(base_url=system.api_url, timeout=30, transport=transport) as guesser:
        statuses = [guesser.post("/admin/login", data={"key": f"iq_guess-{n}"}).status_code for n in range(11)]
        assert statuses == [401] * 10 + [429]
        key = _new_admin_key()
        refused = guesser.post("/admin/login", data={"key": key})
        assert refused.status_code == 429, "even the right key waits: the allowance counts attempts"
        assert 'id="login-error"' in refused.text and "too many sign-in attempts" in refused.text
        # 10 a minute is one every 6 s: Retry-After says when the next attempt is allowed, and it is.
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 6
        time.sleep(retry_after)
        assert guesser.post("/admin/login", data={"key": key}).status_code == 303
    with httpx.Client(base_url=system.api_url, timeout=30) as browser:
        assert browser.post("/admin/login", data={"key": _new_admin_key()}).status_code == 303


def test_overview_renders(admin: httpx.Client) -> None:
    page = admin.get("/admin")
    assert page.status_code == 200, page.text
    for section in ("jobs-hour", "jobs-day", "throughput", "queues", "stage-durations", "webhooks"):
        assert f'id="{section}"' in page.text


def test_finished_job_is_listed_and_its_stage_images_download(admin: httpx.Client, client: Client) -> None:
    job = client.submit("an admin's lighthouse", seed=3, stages=FAST)
    assert client.wait(job["id"])["status"] == "succeeded"

    table = admin.get("/admin/jobs", params={"prompt": "ADMIN'S LIGHT", "fragment": 1})
    assert table.status_code == 200
    assert f'data-job-id="{job["id"]}" data-status="succeeded"' in table.text
    assert "<html" not in table.text  # only the fragment
    assert f'data-job-id="{job["id"]}"' not in admin.get("/admin/jobs", params={"prompt": "no such prompt"}).text
    assert f'data-job-id="{job["id"]}"' in admin.get("/admin/jobs", params={"status": "succeeded"}).text

    detail = admin.get(f"/admin/jobs/{job['id']}")
    assert detail.status_code == 200
    thumbs = re.findall(r'<figure class="thumb".*?data-width="(\d+)".*?<img src="([^"]+)"', detail.text, re.S)
    assert [width for width, _ in thumbs] == ["64", "256", "1024"]
    for _, url in thumbs:
        image = httpx.get(url.replace("&amp;", "&"), timeout=30)
        assert image.status_code == 200
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_cancel_through_the_form(admin: httpx.Client, client: Client) -> None:
    slow = {"base": {"steps": 1000}, "sr256": {"steps": 1000}, "sr1024": {"steps": 1000}}
    job = client.submit("a very slow admin test", stages=slow)
    page = admin.get(f"/admin/jobs/{job['id']}")
    assert 'name="cancel"' in page.text
    response = admin.post(f"/admin/jobs/{job['id']}/cancel", data={"csrf": _csrf(page.text)})
    assert response.status_code == 303
    assert client.wait(job["id"], timeout_s=60)["status"] == "canceled"
    assert 'data-status="canceled"' in admin.get(f"/admin/jobs/{job['id']}").text


def test_a_post_without_the_csrf_token_is_refused(admin: httpx.Client, client: Client) -> None:
    job = client.submit("an admin test without csrf", stages=FAST)
    assert admin.post(f"/admin/jobs/{job['id']}/cancel", data={}).status_code == 403
    assert admin.post(f"/admin/jobs/{job['id']}/cancel", data={"csrf": "0" * 64}).status_code == 403
    assert client.wait(job["id"])["status"] == "succeeded"


def test_tenants_page_creates_a_key_shown_once(admin: httpx.Client, system: System) -> None:
    page = admin.get("/admin/tenants")
    assert page.status_code == 200
    name = f"made-{uuid.uuid4().hex[:6]}"
    created = admin.post("/admin/tenants", data={"csrf": _csrf(page.text), "name": name})
    assert created.status_code == 200
    key = re.search(r'<pre id="new-key"[^>]*>([^<]+)</pre>', created.text)
    assert key
    assert httpx.get(f"{system.api_url}/v1/jobs", headers={"Authorization": f"Bearer {key.group(1)}"}).is_success
    assert f'data-tenant="{name}"' in admin.get("/admin/tenants").text


def test_a_quota_past_what_the_database_holds_is_refused_on_the_page(admin: httpx.Client) -> None:
    page = admin.get("/admin/tenants")
    name = f"quota-{uuid.uuid4().hex[:6]}"
    assert admin.post("/admin/tenants", data={"csrf": _csrf(page.text), "name": name}).status_code == 200
    for value in ("2147483648", "-2147483649", "1e9"):
        refused = admin.post(
            f"/admin/tenants/{name}/quota",
            data={"csrf": _csrf(page.text), "requests_per_minute": value, "max_jobs_in_flight": ""},
        )
        assert refused.status_code == 422, (value, refused.status_code)
        assert "2147483647" in refused.text
    kept = admin.post(
        f"/admin/tenants/{name}/quota",
        data={"csrf": _csrf(page.text), "requests_per_minute": "2147483647", "max_jobs_in_flight": "0"},
    )
    assert kept.status_code == 303
    for ceiling in ("10", "-1", "x"):
        refused = admin.post(f"/admin/tenants/{name}/quota", data={"csrf": _csrf(page.text), "max_priority": ceiling})
        assert refused.status_code == 422 and "priority ceiling is 0 to 9" in refused.text, ceiling
    set_ceiling = admin.post(f"/admin/tenants/{name}/quota", data={"csrf": _csrf(page.text), "max_priority": "3"})
    assert set_ceiling.status_code == 303
    assert 'name="max_priority" inputmode="numeric" size="2" value="3"' in admin.get("/admin/tenants").text


def test_logout_ends_the_session(system: System) -> None:
    with httpx.Client(base_url=system.api_url, timeout=30) as browser:
        browser.post("/admin/login", data={"key": _new_admin_key()})
        page = browser.get("/admin")
        assert page.status_code == 200
        assert browser.post("/admin/logout", data={"csrf": _csrf(page.text)}).status_code == 303
        wait_until(lambda: browser.get("/admin").status_code == 303, 5, "the session to end")
