"""The client side of the CLI: submit a job over HTTP, wait for it, download its images."""

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from core.config import Settings

TERMINAL = {"succeeded", "failed", "canceled"}


def resolve_api_key(settings: Settings, given: str | None) -> str:
    """The key to call the API with: --api-key, IMAGEN_API_KEY, or the embedded mode's admin key."""
    import os

    from cli.embedded import admin_key_path

    key = given or os.environ.get("IMAGEN_API_KEY") or settings.admin_api_key
    if key:
        return key
    path = admin_key_path(settings)
    if path.exists():
        return path.read_text().strip()
    raise SystemExit("no API key: pass --api-key or set IMAGEN_API_KEY")


class ApiClient:
    """A thin client of the v1 HTTP API."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"}
        )

    def _check(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise SystemExit(f"API error {response.status_code}: {message}")
        data: dict[str, Any] = response.json()
        return data

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post("/v1/jobs", json=body))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout_s: float, on_update: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not finish within {timeout_s:.0f} s (still {job['status']})")
            time.sleep(0.3)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.post(f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, timeout_s: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events as (event, data), until ``done``."""
        name = ""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout_s) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    yield name, json.loads(line[6:])
                    if name == "done":
                        return

    def watch(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        """Follow the job's live events with a progress bar per stage; the job once it ended."""
        job = self.job(job_id)
        bars = _ProgressBars(job)
        try:
            for event, data in self.events(job_id, timeout_s):
                bars.update(event, data)
        except httpx.HTTPError as exc:  # the stream broke: polling still gets the job to its end
            print(f"\nlive events unavailable ({exc}); polling", file=sys.stderr)
        bars.close()
        return self.wait(job_id, timeout_s)

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post("/v1/search", json=body))

    def download(self, url: str, path: Path) -> None:
        response = httpx.get(url, timeout=60)
        response.raise_for_status()
        path.write_bytes(response.content)


class _ProgressBars:
    """A progress bar per stage, redrawn in place on a terminal; a line per change otherwise."""

    WIDTH = 12

    def __init__(self, job: dict[str, Any]) -> None:
        self.stages = {s["name"]: [s["status"], float(s["progress"])] for s in job["stages"]}
        self.tty = sys.stderr.isatty()
        self.last = ""
        self.draw()

    def update(self, event: str, data: dict[str, Any]) -> None:
        if event == "progress" and data.get("stage") in self.stages:
            self.stages[data["stage"]][1] = float(data["progress"])
        elif event == "stage" and data.get("name") in self.stages:
            self.stages[data["name"]][0] = data["status"]
            if data["status"] == "succeeded":
                self.stages[data["name"]][1] = 1.0
        self.draw()

    def draw(self) -> None:
        parts = []
        for name, (status, progress) in self.stages.items():
            filled = int(progress * self.WIDTH)
            parts.append(f"{name} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {int(progress * 100):3d}% {status}")
        line = "  ".join(parts)
        if line != self.last:
            self.last = line
            sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def generate(client: ApiClient, body: dict[str, Any], out_dir: Path, timeout_s: float) -> int:
    """Submit a generate job, wait for it and save every stage's images; the exit status."""
    job = client.submit(body)
    print(f"job {job['id']} {job['status']}", file=sys.stderr)
    job = client.watch(job["id"], timeout_s)
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error') or ''}", file=sys.stderr)
        return 1
    folder = out_dir / job["id"]
    folder.mkdir(parents=True, exist_ok=True)
    for stage in job["stages"]:
        for output in stage["outputs"]:
            if output.get("width") is None:
                continue  # the prompt embeddings, not an image
            path = folder / f"{stage['name']}_{output['index']}.png"
            client.download(output["url"], path)
            print(f"{path}  ({output['width']}x{output['height']}, seed {output['seed']})")
    for image in job["output"]["images"]:
        if image.get("caption"):
            print(f"caption (seed {image['seed']}): {image['caption']}")
    return 0


def image_field(path: Path) -> dict[str, str]:
    """An IMAGE input carrying a local file's bytes."""
    import base64

    return {"base64": base64.b64encode(path.read_bytes()).decode()}


def run_job(client: ApiClient, body: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """Submit a job and wait for it; None (reported) if it did not succeed."""
    job = client.submit(body)
    job = client.wait(job["id"], timeout_s)
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error') or ''}", file=sys.stderr)
        return None
    return job
