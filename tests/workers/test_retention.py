"""Retention: the sweeper deletes what IMAGEN_RETAIN_INTERMEDIATE_DAYS and IMAGEN_RETAIN_OUTPUT_DAYS let go."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
from minio import Minio

from tests.conftest import FAST, Client, object_keys


@contextmanager
def _settings(**env: str) -> Iterator[None]:
    """This process's settings with ``env`` set (the system's worker and API keep theirs)."""
    from core.config import get_settings

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def _finished_days_ago(job_id: str, days: float) -> None:
    from db.models import Job
    from db.session import session_scope

    with session_scope() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None and job.finished_at is not None
        job.finished_at -= timedelta(days=days)


def test_the_sweeper_deletes_old_jobs_intermediates_then_everything(client: Client, s3: Minio) -> None:
    from workers.sweeper import sweep_retention

    old = client.submit(seed=21, stages=FAST)
    recent = client.submit(seed=22, stages=FAST)
    old, recent = client.wait(old["id"]), client.wait(recent["id"])
    assert old["status"] == recent["status"] == "succeeded"
    recent_keys = object_keys(s3, recent["id"])
    assert len(recent_keys) == 4  # the embeddings and one image of each stage
    _finished_days_ago(old["id"], 10)

    with _settings(IMAGEN_RETAIN_INTERMEDIATE_DAYS="7"):
        swept = sweep_retention()
    assert swept.intermediates >= 1
    assert object_keys(s3, old["id"]) == [f"jobs/{old['id']}/sr_1024/0.png"]
    assert object_keys(s3, recent["id"]) == recent_keys
    pruned = client.job(old["id"])
    assert pruned["deleted_at"] is None
    assert [o["url"] is None for s in pruned["stages"] for o in s["outputs"]] == [True, True, True, False]
    assert httpx.get(pruned["output"]["images"][0]["url"], timeout=30).status_code == 200
    assert all(o["url"] for s in client.job(recent["id"])["stages"] for o in s["outputs"])

    with _settings(IMAGEN_RETAIN_INTERMEDIATE_DAYS="7", IMAGEN_RETAIN_OUTPUT_DAYS="9"):
        swept = sweep_retention()
    assert swept.purged >= 1
    assert object_keys(s3, old["id"]) == []
    gone = client.job(old["id"])
    assert gone["deleted_at"] is not None and gone["output"] is None
    assert object_keys(s3, recent["id"]) == recent_keys
    assert client.job(recent["id"])["deleted_at"] is None


def test_unset_retention_keeps_everything(client: Client, s3: Minio) -> None:
    from workers.sweeper import sweep_retention

    job = client.wait(client.submit(seed=23, stages=FAST, resolution=64)["id"])
    keys = object_keys(s3, job["id"])
    _finished_days_ago(job["id"], 3650)
    with _settings():
        sweep_retention()
    assert object_keys(s3, job["id"]) == keys
    assert client.job(job["id"])["deleted_at"] is None
