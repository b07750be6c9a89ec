"""The README's API and client examples, run as they are written against a real `imagen-queue up`.

A fenced block right after `<!-- readme-test -->` is shell run by bash (the blocks of a page share one
shell, in order, as a reader pasting them into one terminal would); `<!-- readme-test: python -->` is a
Python script; `<!-- readme-test: receiver -->` is the webhook receiver, started before the shell blocks.
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.services import free_port
from tests.cli.test_embedded import Embedded
from tests.servers import REPO, stop_process, wait_until

SECTIONS = ("## Using the API", "## Commands")
_BLOCK = re.compile(r"^<!-- readme-test(?:: (?P<role>\w+))? -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.M | re.S)


def _section(readme: str, heading: str) -> str:
    start = readme.index(f"\n{heading}\n")
    end = readme.find("\n## ", start + len(heading) + 2)
    return readme[start : end if end != -1 else None]


def readme_examples() -> list[tuple[str, str]]:
    """(role, code) of every marked block in the sections whose examples must run, in README order."""
    readme = (REPO / "README.md").read_text()
    found = []
    for heading in SECTIONS:
        for match in _BLOCK.finditer(_section(readme, heading)):
            role = match["role"] or "shell"
            assert (role == "shell") == (match["lang"] == "bash"), f"a {role} block in {match['lang']}"
            found.append((role, match["code"]))
    return found


def test_the_readme_marks_its_examples() -> None:
    roles = [role for role, _ in readme_examples()]
    assert roles.count("shell") >= 5 and roles.count("python") == 1 and roles.count("receiver") == 1, roles


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Embedded]:
    embedded = Embedded(tmp_path / "data")
    # The receiver of the webhook example listens on loopback.
    embedded.env["IMAGEN_WEBHOOK_ALLOW_PRIVATE"] = "true"
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def _jobs(system: Embedded, headers: dict[str, str]) -> list[dict[str, object]]:
    response = httpx.get(f"{system.url}/v1/jobs", params={"limit": 100}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    jobs: list[dict[str, object]] = response.json()["items"]
    return jobs


def test_the_readme_examples_run_against_imagen_queue_up(system: Embedded, tmp_path: Path) -> None:
    examples = readme_examples()
    work = tmp_path / "terminal"
    work.mkdir()
    hook_port = free_port()
    # A second terminal: only the data dir (and where the API listens, as `up --port` was given) is set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEN_")}
    env.update({"IMAGEN_DATA_DIR": str(system.data_dir), "IMAGEN_API_URL": system.url, "HOOK_PORT": str(hook_port)})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    (receiver_code,) = [code for role, code in examples if role == "receiver"]
    (work / "receiver.py").write_text(receiver_code)
    receiver_log = work / "receiver.log"
    with open(receiver_log, "wb") as log:
        receiver = subprocess.Popen(
            [sys.executable, "receiver.py"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: _listening(hook_port, receiver, receiver_log), 30, "the webhook receiver", 0.2)

        shell = [code for role, code in examples if role == "shell"]
        script = "set -euo pipefail\n" + "".join(
            f"{code}\nprintf '\\n::block {i} ok\\n'\n" for i, code in enumerate(shell)
        )
        result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        done = re.findall(r"^::block (\d+) ok$", result.stdout, re.M)
        assert result.returncode == 0, (
            f"block {len(done)} failed:\n{shell[len(done)]}\n{result.stdout}\n{result.stderr}"
        )
        assert len(done) == len(shell)
        assert (work / "out.png").read_bytes().startswith(b"\x89PNG")

        (python_code,) = [code for role, code in examples if role == "python"]
        ran = subprocess.run(
            [sys.executable, "-c", python_code], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout.startswith("succeeded "), ran.stdout
        assert "422 input.stages" in ran.stdout, ran.stdout
        assert (work / "circle.png").read_bytes().startswith(b"\x89PNG")

        # Every job the examples submitted ends well (the canceled one succeeds once retried, or had
        # already finished when the cancel came).
        key = (system.data_dir / "admin_api_key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}

        def all_ended() -> bool:
            return all(job["status"] in ("succeeded", "failed", "canceled") for job in _jobs(system, headers))

        wait_until(all_ended, 120, "the README's jobs to end", 0.5)
        jobs = _jobs(system, headers)
        assert {job["kind"] for job in jobs} == {"generate", "caption", "index"}
        assert len(jobs) >= 6 and all(job["status"] == "succeeded" for job in jobs), [
            (job["kind"], job["status"], job["error"]) for job in jobs
        ]

        hooked = [job for job in jobs if (job["input"] or {}).get("prompt") == "a green triangle at the bottom"]  # type: ignore[union-attr]
        assert len(hooked) == 1

        def delivered() -> bool:
            return f"job.succeeded {hooked[0]['id']} succeeded" in receiver_log.read_text()

        wait_until(delivered, 60, "the signed job.succeeded webhook", 0.5)
        assert f"job.started {hooked[0]['id']}" in receiver_log.read_text()
    finally:
        stop_process(receiver, timeout_s=10)


def _listening(port: int, receiver: subprocess.Popen[bytes], log: Path) -> bool:
    assert receiver.poll() is None, log.read_text()
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.TransportError:
        time.sleep(0.1)
        return False
    return True
