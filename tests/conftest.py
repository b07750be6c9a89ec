"""Session fixtures: the whole system running on loopback, and API clients for two tenants."""

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from minio import Minio

from tests.servers import System, wait_until

TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    """Postgres (pgvector), Redis, an S3 server, the API, one worker and beat, as real processes."""
    system = System()
    try:
        system.start_stores()
        # This process talks to the same database (to create keys and check rows).
        os.environ.update({k: v for k, v in system.env.items() if k.startswith("IMAGEN_")})
        from core.config import get_settings

        get_settings.cache_clear()
        from core.presets import get_preset
        from db.migrate import upgrade
        from workers.preset_files import build_preset

        upgrade(system.env["IMAGEN_DATABASE_URL"])
        settings = get_settings()
        build_preset(get_preset(settings.model_preset), settings.resolved_models_dir)
        system.start_processes()
        yield system
    finally:
        from db.session import get_engine

        if get_engine.cache_info().currsize:
            get_engine().dispose()
        system.stop()


def _new_key(tenant: str) -> str:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        row = tenants.get_or_create_tenant(session, name=tenant)
        _, key = tenants.create_api_key(session, tenant=row)
    return key


class Client:
    """An API client for one tenant, with the waits the tests need."""

    def __init__(self, system: System, key: str) -> None:
        self.system = system
        self.http = httpx.Client(base_url=system.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def submit(self, prompt: str = "a corgi wearing a crown", *, timeout_s: float = 30, **input: Any) -> dict[str, Any]:
        body = {"kind": "generate", "input": {"prompt": prompt, **input}}
        response = self.http.post("/v1/jobs", json=body, timeout=timeout_s)
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout_s: float = 120, statuses: set[str] = TERMINAL) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_until(done, timeout_s, f"job {job_id} to reach {statuses}", 0.2)  # type: ignore[no-any-return]
        except AssertionError:
            worker = self.system.worker.log_tail() if self.system.worker else ""
            raise AssertionError(f"job {job_id}: {self.job(job_id)}\n--- worker log ---\n{worker}") from None

    def wait_stage(
        self, job_id: str, stage: str, min_progress: float = 0.0, timeout_s: float = 60, attempt: int | None = None
    ) -> dict[str, Any]:
        """Wait until ``stage`` is running (its ``attempt``-th time) with at least ``min_progress``."""

        def running() -> dict[str, Any] | None:
            job = self.job(job_id)
            row = next(s for s in job["stages"] if s["name"] == stage)
            if job["status"] in TERMINAL:
                raise AssertionError(f"job ended before {stage} ran: {job}")
            if attempt is not None and row["attempts"] != attempt:
                return None
            return job if row["status"] == "running" and row["progress"] >= min_progress else None

        return wait_until(running, timeout_s, f"{stage} of job {job_id} to run", 0.05)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def client(system: System) -> Iterator[Client]:
    """Tenant A's client."""
    client = Client(system, _new_key(f"tenant-a-{uuid.uuid4().hex[:6]}"))
    yield client
    client.http.close()


@pytest.fixture(scope="session")
def other_client(system: System) -> Iterator[Client]:
    """Tenant B's client."""
    client = Client(system, _new_key(f"tenant-b-{uuid.uuid4().hex[:6]}"))
    yield client
    client.http.close()


@pytest.fixture(scope="session")
def s3(system: System) -> Minio:
    """A plain minio client on the test S3 server, to look at the bucket directly."""
    return Minio(system.s3.endpoint, access_key="test-access", secret_key="test-secret", secure=False)


def object_keys(s3: Minio, job_id: str) -> list[str]:
    """Every object stored under a job's prefix."""
    return sorted(o.object_name for o in s3.list_objects("imagen-test", prefix=f"jobs/{job_id}/", recursive=True))


# Few steps: the tests check the plumbing, and every stage still runs its real pipeline.
FAST = {"base": {"steps": 3}, "sr256": {"steps": 2}, "sr1024": {"steps": 2}}


def elapsed(start: float) -> float:
    return time.monotonic() - start
