"""docker-compose.yml read as data: every model queue has a GPU worker, by default and in the two-gpu profile,
where each stage group's worker is pinned to its own device, and a CPU worker in the cpu profile; every
command is one the CLI has, every IMAGEN_ variable one the settings read; model workers wait for the
`models` service; every long-running service has a health check. Compose itself runs only where a docker
CLI with compose is installed (`docker compose config` for every profile)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.services import free_port
from core.config import Settings
from core.routing import MODEL_QUEUES, QUEUES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROFILES = (None, "two-gpu", "cpu", "flower", "prometheus")
# `${NAME}`, `${NAME:-default}`, `${NAME:?message}`, as compose interpolates them.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _interpolated(text: str) -> str:
    """``text`` as compose reads it with nothing set: defaults taken, required values a placeholder."""
    return _VARIABLE.sub(lambda m: m.group(3) if m.group(2) == "-" else "x", text)


def _queues(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return list(command[command.index("--queues") + 1].split(","))


def _model_workers(profile: str | None) -> dict[str, dict[str, Any]]:
    """The workers that serve a model queue and start with `profile` (None: with no profile named)."""
    return {
        name: service
        for name, service in _services().items()
        if service.get("command", [])[:2] == ["imagen-queue", "worker"]
        and set(_queues(service)) & set(MODEL_QUEUES)
        and (profile in service.get("profiles", []) if profile else "profiles" not in service)
    }


def _gpu_reservation(service: dict[str, Any]) -> dict[str, Any]:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    reservation: dict[str, Any] = devices[0]
    assert reservation["capabilities"] == ["gpu"]
    return reservation


def test_every_worker_names_only_queues_that_exist() -> None:
    workers = [s for s in _services().values() if s.get("command", [])[:2] == ["imagen-queue", "worker"]]
    assert workers
    assert {queue for service in workers for queue in _queues(service)} <= set(QUEUES)


def test_by_default_one_gpu_worker_serves_every_model_queue() -> None:
    workers = _model_workers(None)
    assert list(workers) == ["worker"]
    assert sorted(_queues(workers["worker"])) == sorted(MODEL_QUEUES)
    assert _gpu_reservation(workers["worker"])["count"] == 1


def test_the_two_gpu_profile_serves_each_model_queue_once_on_pinned_gpus() -> None:
    workers = _model_workers("two-gpu")
    served = [queue for service in workers.values() for queue in _queues(service)]
    assert sorted(served) == sorted(MODEL_QUEUES)
    device = {}
    for name, service in workers.items():
        reservation = _gpu_reservation(service)
        assert "count" not in reservation, name  # compose refuses count beside device_ids
        assert len(reservation["device_ids"]) == 1, name
        assert service["command"][service["command"].index("--pool") + 1] == "solo", name
        for queue in _queues(service):
            device[queue] = reservation["device_ids"][0]
    # Stage I beside the text encoder that feeds it; the super-resolution stages on the other GPU.
    assert device["text"] == device["base"] == "0"
    assert device["sr"] == "1"


def test_the_cpu_profile_serves_every_model_queue_without_a_gpu() -> None:
    workers = _model_workers("cpu")
    assert list(workers) == ["worker-cpu"]
    assert sorted(_queues(workers["worker-cpu"])) == sorted(MODEL_QUEUES)
    assert "deploy" not in workers["worker-cpu"]


def cli_help(*words: str) -> str:
    """The help of the CLI command ``words`` (``imagen-queue`` left out), from the command line itself: exits
    non-zero for a command the CLI does not have."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *words, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"imagen-queue {' '.join(words)}: {done.stderr}"
    return done.stdout


def test_every_service_command_is_a_cli_command_with_options_it_has() -> None:
    commands = {
        name: [_interpolated(str(token)) for token in service["command"]]
        for name, service in _services().items()
        if service.get("command", [None])[0] == "imagen-queue"
    }
    assert {"migrate", "models", "api", "worker", "worker-cpu", "control", "webhooks", "beat"} <= set(commands)
    for name, command in commands.items():
        words = [token for token in command[1:] if not token.startswith("-")]
        options = [token for token in command[1:] if token.startswith("--")]
        # The leading words up to the first option: the command and its positional arguments.
        first_option = next((i for i, token in enumerate(command) if token.startswith("-")), len(command))
        help_text = cli_help(*command[1:first_option])
        missing = [option for option in options if option not in help_text]
        assert not missing, f"{name}: imagen-queue {' '.join(words)} has no {missing}"


def test_every_imagen_variable_of_compose_and_env_example_is_a_setting() -> None:
    settings = {f"IMAGEN_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"\bIMAGEN_[A-Z0-9_]+", COMPOSE.read_text()))
    named |= {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith("IMAGEN_")}
    assert {"IMAGEN_MODEL_PRESET", "IMAGEN_SECRET_KEY", "IMAGEN_ADMIN_API_KEY"} <= named
    assert named - settings == set()


def test_model_workers_wait_for_the_models_service_and_run_the_preset_of_env() -> None:
    services = _services()
    assert services["models"]["command"][:3] == ["imagen-queue", "models", "fetch"]
    assert services["models"]["restart"] == "no"
    model_workers = [name for profile in PROFILES[:3] for name in _model_workers(profile)]
    assert len(model_workers) == 5
    preset = services["api"]["environment"]["IMAGEN_MODEL_PRESET"]
    assert preset.startswith("${IMAGEN_MODEL_PRESET")
    assert services["models"]["command"][3] == preset
    for name in model_workers:
        service = services[name]
        assert service["depends_on"]["models"] == {"condition": "service_completed_successfully"}, name
        assert service["environment"]["IMAGEN_MODEL_PRESET"] == preset, name
        # The workers and the fetch share the caches.
        assert set(service["volumes"]) == set(services["models"]["volumes"]), name


def test_the_secret_key_is_required_and_every_long_running_service_has_a_health_check() -> None:
    services = _services()
    for name in ("api", "migrate", "worker", "beat"):
        environment = services[name]["environment"]
        assert environment["IMAGEN_REQUIRE_SECRET_KEY"] == "true", name
        assert environment["IMAGEN_SECRET_KEY"].startswith("${IMAGEN_SECRET_KEY:?"), name
    long_running = [name for name, service in services.items() if service.get("restart") != "no"]
    assert {"api", "worker", "control", "webhooks", "beat", "flower"} <= set(long_running)
    assert [name for name in long_running if "healthcheck" not in services[name]] == []


def test_the_api_refuses_to_start_without_the_secret_key_it_requires(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "IMAGEN_SECRET_KEY"},
        "IMAGEN_REQUIRE_SECRET_KEY": "true",
        "IMAGEN_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "api", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "set IMAGEN_SECRET_KEY" in done.stderr


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


@pytest.mark.parametrize("profile", PROFILES)
def test_docker_compose_accepts_the_file_in_every_profile(profile: str | None, tmp_path: Path) -> None:
    compose = _compose_cli()
    if compose is None:
        pytest.skip("no docker compose CLI here: the file is checked as data only")
    env_file = tmp_path / ".env"
    filled = {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MINIO_APP_PASSWORD", "IMAGEN_SECRET_KEY"}
    lines = [
        f"{line}secret-value-1234" if line.rstrip("=") in filled else line
        for line in ENV_EXAMPLE.read_text().splitlines()
    ]
    env_file.write_text("\n".join(lines) + "\n")
    args = [*compose, "--env-file", str(env_file), "-f", str(COMPOSE), *(["--profile", profile] if profile else [])]
    done = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Without the secret key compose refuses, as it does without a password.
    env_file.write_text("\n".join(line for line in lines if not line.startswith("IMAGEN_SECRET_KEY")) + "\n")
    refused = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "IMAGEN_SECRET_KEY" in refused.stderr
