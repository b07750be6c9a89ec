"""`imagen-queue up`: the embedded system (Postgres and Redis from wheels, a folder store) end to end,
through the CLI, and its state across a restart."""

import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from cli.services import free_port
from tests.servers import REPO, stop_process, wait_until


def _size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


class Embedded:
    def __init__(self, data_dir: Path, *options: str) -> None:
        self.data_dir = data_dir
        self.options = options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEN_")}
        # The tiny preset (built on the spot): `up` would otherwise pick one by the machine it runs on.
        self.env.update(
            {
                "IMAGEN_DATA_DIR": str(data_dir),
                "IMAGEN_MODEL_PRESET": "tiny",
                "IMAGEN_TORCH_THREADS": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "up-test.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "up", "--port", str(self.port), *self.options],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            return "imagen-queue is up" in self.log.read_text(errors="replace")[offset:]

        wait_until(up, 120, "imagen-queue up", 0.5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=60)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args, "--api-url", self.url],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    system = Embedded(tmp_path / "data")
    system.start()
    try:
        yield system
    finally:
        system.stop()


def test_up_runs_jobs_and_search_and_keeps_them_across_a_restart(embedded: Embedded, tmp_path: Path) -> None:
    log = embedded.log.read_text()
    key = (embedded.data_dir / "admin_api_key").read_text().strip()
    assert key in log and embedded.url in log, "the address and the admin key are printed"

    result = embedded.cli(
        "generate",
        "a corgi wearing a crown",
        "--seed",
        "3",
        "--resolution",
        "256",
        "--index",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    paths = re.findall(r"^(\S+\.png)", result.stdout, re.M)
    assert [_size(Path(p).read_bytes()) for p in paths] == [(64, 64), (256, 256)]

    # Search goes through the embed worker and a Celery result on the unix-socket Redis.
    headers = {"Authorization": f"Bearer {key}"}
    final = Path(paths[-1]).read_bytes()
    response = httpx.post(
        f"{embedded.url}/v1/search",
        headers=headers,
        timeout=30,
        json={"image": {"base64": base64.b64encode(final).decode()}, "k": 1},
    )
    assert response.status_code == 200, response.text
    (hit,) = response.json()["results"]
    job_id = Path(paths[-1]).parent.name
    assert hit["job_id"] == job_id
    assert httpx.get(hit["image_url"], timeout=30).content == final, "the folder store serves signed URLs"

    caption = embedded.cli("caption", paths[0])
    assert caption.returncode == 0 and caption.stdout.strip(), caption.stderr

    embedded.stop()
    embedded.start()
    job = httpx.get(f"{embedded.url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
    assert job["status"] == "succeeded"
    image = httpx.get(job["output"]["images"][0]["url"], timeout=30)
    assert image.status_code == 200 and _size(image.content) == (256, 256)


def _child(embedded: Embedded, marker: str) -> psutil.Process:
    """The live process `up` runs whose command line contains ``marker``."""
    assert embedded.process is not None
    found = []
    for child in psutil.Process(embedded.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and marker in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue  # gone, or a zombie, since the listing
    assert len(found) == 1, f"{len(found)} processes match {marker!r}"
    return found[0]


def test_up_restarts_a_child_that_dies_and_keeps_serving(embedded: Embedded, tmp_path: Path) -> None:
    worker = _child(embedded, "model@%h")
    worker.kill()  # SIGKILL: as an out-of-memory kill would
    api = _child(embedded, " api ")
    api.kill()

    def replaced(marker: str, old: psutil.Process) -> bool:
        try:
            return _child(embedded, marker).pid != old.pid
        except AssertionError:
            return False  # the dead one is still there, or the new one not yet

    wait_until(lambda: replaced("model@%h", worker) and replaced(" api ", api), 60, "the children to be restarted")
    assert embedded.process is not None and embedded.process.poll() is None, "up itself goes on"

    def api_answers() -> bool:
        try:
            return httpx.get(f"{embedded.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(api_answers, 60, "the restarted API")
    result = embedded.cli("generate", "a corgi", "--seed", "4", "--resolution", "64", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr + embedded.log.read_text()[-3000:]
    assert "worker exited" in embedded.log.read_text() and "api exited" in embedded.log.read_text()


def test_up_with_stage_workers_splits_the_cascade_and_each_holds_only_its_models(tmp_path: Path) -> None:
    embedded = Embedded(tmp_path / "data", "--stage-workers")
    embedded.start()
    try:
        result = embedded.cli("generate", "a corgi wearing a crown", "--seed", "3", "--resolution", "256")
        assert result.returncode == 0, result.stderr
        paths = re.findall(r"^(\S+\.png)", result.stdout, re.M)
        assert [_size(Path(p).read_bytes()) for p in paths] == [(64, 64), (256, 256)]
    finally:
        embedded.stop()
    logs = embedded.data_dir / "logs"
    loaded = {
        name: set(re.findall(r"loaded (\S+) of preset tiny", (logs / f"{name}.log").read_text()))
        for name in ("worker-text-base", "worker-sr")
    }
    assert loaded == {"worker-text-base": {"text_encoder", "base_64"}, "worker-sr": {"sr_256"}}, loaded
    assert not (logs / "worker.log").exists(), "no all-queue worker beside the stage workers"


def test_admin_and_client_commands_find_the_system_from_the_data_dir_alone(embedded: Embedded) -> None:
    connection = embedded.data_dir / "connection.json"
    assert connection.stat().st_mode & 0o777 == 0o600
    assert json.loads(connection.read_text())["api_url"] == embedded.url
    only_data_dir = {k: v for k, v in embedded.env.items() if k not in ("IMAGEN_MODEL_PRESET", "IMAGEN_TORCH_THREADS")}
    assert [k for k in only_data_dir if k.startswith("IMAGEN_")] == ["IMAGEN_DATA_DIR"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=only_data_dir,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = run("tenants", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "default" in [t["name"] for t in json.loads(listed.stdout)["tenants"]]
    # A client command reaches the API `up` recorded, with the admin key it kept.
    jobs = run("jobs", "list", "--json")
    assert jobs.returncode == 0 and json.loads(jobs.stdout) == [], jobs.stderr

    embedded.stop()
    # Stopped: an admin command starts the embedded Postgres for itself; a client command says it cannot connect.
    listed = run("tenants", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "default" in [t["name"] for t in json.loads(listed.stdout)["tenants"]]
    down = run("jobs", "list")
    assert down.returncode == 3 and "connection_failed" in down.stderr, down.stderr
