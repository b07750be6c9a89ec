"""The admin dashboard in a real browser: headless Chromium driven by Playwright."""

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import FAST, Client
from tests.servers import REPO, System

ARTIFACTS = REPO / "test-artifacts"


def _chromium() -> str:
    path = os.environ.get("IMAGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), "the browser tests need Chromium (apt-get install chromium, or set IMAGEN_CHROMIUM)"
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


class Session:
    """A browser page and the errors its console reported."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda message: self.errors.append(message.text) if _is_error(message) else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))


@pytest.fixture
def session(browser: Browser) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    yield Session(context.new_page())
    context.close()


def _is_error(message: ConsoleMessage) -> bool:
    return message.type == "error"


def _admin_key(tenant: str, *, admin: bool) -> str:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        row = tenants.get_or_create_tenant(session, name=tenant)
        _, key = tenants.create_api_key(session, tenant=row, is_admin=admin)
    return key


def _login(page: Page, system: System, key: str) -> None:
    page.goto(f"{system.api_url}/admin/login")
    page.fill("#login-key", key)
    page.click("#login-submit")


def test_a_non_admin_key_cannot_log_in(session: Session, system: System) -> None:
    page = session.page
    _login(page, system, _admin_key(f"plain-{uuid.uuid4().hex[:6]}", admin=False))
    expect(page.locator("#login-error")).to_be_visible()
    expect(page.locator("#login-key")).to_be_visible()
    assert "/admin/login" in page.url
    # The refused login answers 401, which the browser reports; nothing else may go wrong.
    assert [e for e in session.errors if "401" not in e] == [], session.errors


def test_dashboard_shows_jobs_their_images_and_cancels_a_queued_job(
    session: Session, system: System, client: Client
) -> None:
    page = session.page
    ARTIFACTS.mkdir(exist_ok=True)
    finished = client.wait(client.submit(seed=12, stages=FAST)["id"])
    assert finished["status"] == "succeeded"

    _login(page, system, _admin_key(f"ops-{uuid.uuid4().hex[:6]}", admin=True))
    expect(page).to_have_url(f"{system.api_url}/admin")
    # The model worker has loaded the parts of the tiny cascade a job ran; the control and webhook workers
    # load nothing.
    expect(page.locator("#workers tr[data-worker]")).to_have_count(3)
    expect(page.locator("#workers")).to_contain_text("tiny/text_encoder")
    expect(page.locator("#workers")).to_contain_text("tiny/base_64")
    # Every worker runs on this host: each model is listed with the worker process that holds it only.
    expect(page.locator('#workers tr[data-worker^="worker@"]')).to_contain_text("tiny/base_64")
    expect(page.locator('#workers tr[data-worker^="control-worker@"]')).not_to_contain_text("tiny/")
    expect(page.locator('#workers tr[data-worker^="webhook-worker@"]')).not_to_contain_text("tiny/")
    page.screenshot(path=str(ARTIFACTS / "admin-overview.png"), full_page=True)

    page.goto(f"{system.api_url}/admin/jobs")
    row = page.locator(f"tr.job-row[data-job-id='{finished['id']}']")
    expect(row).to_be_visible()
    row.locator("a.job-link").click()
    expect(page).to_have_url(f"{system.api_url}/admin/jobs/{finished['id']}")
    thumbs = page.locator(".thumb img")
    expect(thumbs).to_have_count(3)
    for i in range(3):
        thumbs.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbs.nth(i).element_handle())
    widths = [thumbs.nth(i).evaluate("img => img.naturalWidth") for i in range(3)]
    assert sorted(widths) == [64, 256, 1024]
    page.screenshot(path=str(ARTIFACTS / "admin-job.png"), full_page=True)

    # One model worker: while it denoises a long job, the next one stays queued for the page to cancel.
    busy = client.submit(seed=1, resolution=64, stages={"base": {"steps": 400}})
    client.wait_stage(busy["id"], "base_64", min_progress=0.01)
    queued = client.submit(seed=2, resolution=64, stages=FAST)
    try:
        page.goto(f"{system.api_url}/admin/jobs/{queued['id']}")
        expect(page.locator("#job")).to_have_attribute("data-status", "queued")
        page.click("button[name=cancel]")
        expect(page.locator("#job")).to_have_attribute("data-status", "canceled", timeout=15_000)
        assert client.job(queued["id"])["status"] == "canceled"
        assert session.errors == [], f"console errors: {session.errors}"
    finally:
        client.http.post(f"/v1/jobs/{busy['id']}/cancel")
        client.wait(busy["id"])


def test_a_live_job_page_follows_the_job_in_place_without_reloading(
    session: Session, system: System, client: Client
) -> None:
    page = session.page
    image_requests: list[str] = []
    page.on("request", lambda request: image_requests.append(request.url) if request.resource_type == "image" else None)
    _login(page, system, _admin_key(f"live-{uuid.uuid4().hex[:6]}", admin=True))
    expect(page).to_have_url(f"{system.api_url}/admin")

    # Enough base steps for several progress events (at most one every 0.25 s) while the page watches.
    job = client.submit(seed=5, resolution=256, stages={"base": {"steps": 120}, "sr256": {"steps": 2}})
    page.goto(f"{system.api_url}/admin/jobs/{job['id']}")
    page.evaluate("window.__marker = 'still this document'")
    base_pct = page.locator("#stages tr.stage[data-stage='base_64'] .pct")
    first = base_pct.text_content()
    expect(base_pct).not_to_have_text(first or "", timeout=30_000)
    seen_midway = base_pct.text_content()
    assert seen_midway not in ("100%", first), "a progress value between the first and the last was shown"

    assert client.wait(job["id"], timeout_s=240)["status"] == "succeeded"
    expect(page.locator("#job")).to_have_attribute("data-status", "succeeded", timeout=15_000)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#stages tr.stage[data-stage='sr_256'] .status")).to_have_text("succeeded")
    thumbs = page.locator(".thumb img")
    expect(thumbs).to_have_count(2, timeout=15_000)
    for i in range(2):
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbs.nth(i).element_handle())
    assert sorted(thumbs.nth(i).evaluate("img => img.naturalWidth") for i in range(2)) == [64, 256]
    assert page.evaluate("window.__marker") == "still this document", "the page was reloaded"
    # Each image was fetched once: the images already shown were kept when later ones arrived.
    assert len(image_requests) == 2, image_requests
    assert session.errors == [], f"console errors: {session.errors}"
