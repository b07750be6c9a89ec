"""docker-compose.yml read as data: every model queue has a GPU worker, by default and in the two-gpu profile,
where each stage group's worker is pinned to its own device. (No Docker here: compose itself never runs.)"""

from pathlib import Path
from typing import Any

import yaml

from core.routing import MODEL_QUEUES, QUEUES

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


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
