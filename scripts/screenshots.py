"""Take the README's dashboard screenshots from a real system on the `toy` preset.

Starts `imagen-queue up` on a temporary data dir, runs a few toy jobs (captioned, so the job page shows a
caption), signs into the dashboard with the admin key in headless Chromium, and saves docs/dashboard.png
(the job list) and docs/dashboard-job.png (one job's page).

    python scripts/screenshots.py            # needs Chromium (apt-get install chromium, or IMAGEN_CHROMIUM)
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout, not an installed copy

from cli.services import free_port  # noqa: E402

PROMPTS = ["a red circle on the left", "a blue square at the top", "a green triangle at the bottom"]


def main() -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="imagen-screens-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "IMAGEN_DATA_DIR": str(data_dir), "IMAGEN_MODEL_PRESET": "toy", "HF_HUB_OFFLINE": "1"}
    log = open(data_dir / "up.log", "wb")  # noqa: SIM115 (kept for the child's lifetime)
    up = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    try:
        key_file = data_dir / "admin_api_key"
        deadline = time.monotonic() + 600
        while not (key_file.exists() and _ready(url)):
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"imagen-queue up did not come up; see {data_dir / 'up.log'}")
            time.sleep(1)
        key = key_file.read_text().strip()
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        last = ""
        for i, prompt in enumerate(PROMPTS):
            body = {"kind": "generate", "input": {"prompt": prompt, "seed": 7 + i, "caption": True}}
            job = http.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"}).json()
            last = job["id"]
        while http.get(f"/v1/jobs/{last}").json()["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(1)
        _shoot(url, key, last)
    finally:
        up.terminate()
        up.wait(60)
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _shoot(url: str, key: str, job_id: str) -> None:
    chromium = os.environ.get("IMAGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.goto(f"{url}/admin/login")
        page.fill("#login-key", key)
        page.click("#login-submit")
        page.wait_for_load_state("networkidle")
        page.goto(f"{url}/admin")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(REPO / "docs" / "dashboard.png"))
        page.goto(f"{url}/admin/jobs/{job_id}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(REPO / "docs" / "dashboard-job.png"))
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
