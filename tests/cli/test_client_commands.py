"""The client commands (generate, jobs ..., search) through imagen_queue_client, and their exit codes."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests.client.conftest import new_key
from tests.servers import REPO, System


def _cli(system: System, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**system.env, "IMAGEN_API_KEY": key},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_options_jobs_commands_and_exit_codes(system: System, tmp_path: Path) -> None:
    key = new_key(f"cli-client-{uuid.uuid4().hex[:6]}")
    done = _cli(
        system,
        key,
        "generate",
        "a corgi",
        "--resolution",
        "64",
        "--seed",
        "11",
        "--steps",
        "base=2",
        "--guidance",
        "base=3.5",
        "--priority",
        "7",
        "--metadata",
        "user=u-9",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["priority"] == 7 and job["metadata"] == {"user": "u-9"}
    assert job["input"]["stages"]["base_64"] == {"steps": 2, "guidance_scale": 3.5}  # stored by stage name

    listed = _cli(system, key, "jobs", "list", "--json")
    assert listed.returncode == 0 and [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    table = _cli(system, key, "jobs", "list")
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "KIND", "STATUS"] and job["id"] in table.stdout
    got = _cli(system, key, "jobs", "get", job["id"], "--json")
    assert json.loads(got.stdout)["id"] == job["id"]
    assert _cli(system, key, "jobs", "deliveries", job["id"], "--json").stdout.strip() == "[]"

    # 2: the API refused the request (a 4xx), with its code and field; or bad usage.
    bad = _cli(system, key, "generate", "a corgi", "--steps", "base=0")
    assert bad.returncode == 2 and "input.stages.base.steps" in bad.stderr, bad.stderr
    assert _cli(system, key, "jobs", "get", str(uuid.uuid4())).returncode == 2
    assert _cli(system, key, "generate", "a corgi", "--steps", "base").returncode == 2
    assert _cli(system, key, "jobs", "retry", job["id"]).returncode == 2  # a succeeded job: 409

    # 1: the job was canceled.
    slow = _cli(system, key, "generate", "a corgi", "--resolution", "64", "--steps", "base=40", "--timeout", "0.1")
    assert slow.returncode == 3 and "did not end" in slow.stderr, slow.stderr
    slow_id = slow.stderr.split()[1]
    assert _cli(system, key, "jobs", "cancel", slow_id).returncode == 0
    assert _cli(system, key, "watch", slow_id).returncode == 1

    # 3: the API cannot be reached.
    down = _cli(system, key, "jobs", "list", "--api-url", "http://127.0.0.1:1")
    assert down.returncode == 3
