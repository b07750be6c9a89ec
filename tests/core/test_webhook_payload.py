"""Webhook payloads keep object keys, not URLs: each attempt signs its own."""

import uuid
from datetime import UTC, datetime

from core.statuses import JobStatus, StageStatus
from core.webhook_payload import job_snapshot, with_image_urls
from db.models import Job, JobStage


def _running_job(prompt: str) -> Job:
    job = Job(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        kind="generate",
        status=JobStatus.RUNNING,
        preset="tiny",
        input={"prompt": prompt},
        meta={"note": "https://example.com/not-an-image"},
        priority=5,
        created_at=datetime.now(UTC),
    )
    job.stages = [
        JobStage(name="encode_text", position=0, queue="text", status=StageStatus.SUCCEEDED, progress=1.0, attempts=1),
        JobStage(name="base_64", position=1, queue="base", status=StageStatus.SUCCEEDED, progress=1.0, attempts=1),
    ]
    job.stages[0].outputs = []
    job.stages[1].outputs = [
        {"index": 0, "key": f"jobs/{job.id}/base_64/0.png", "width": 64, "height": 64, "seed": 1},
        {"index": 1, "key": f"jobs/{job.id}/base_64/1.png", "width": 64, "height": 64, "seed": 2},
    ]
    return job


def test_the_snapshot_keeps_keys_where_the_urls_go() -> None:
    job = _running_job("a corgi")
    snapshot, image_keys = job_snapshot(job)

    assert [o["url"] for o in snapshot["stages"][1]["outputs"]] == [None, None]
    assert image_keys == [
        (["stages", 1, "outputs", 0, "url"], f"jobs/{job.id}/base_64/0.png"),
        (["stages", 1, "outputs", 1, "url"], f"jobs/{job.id}/base_64/1.png"),
    ]
    assert snapshot["input"] == {"prompt": "a corgi"} and snapshot["metadata"] == job.meta


def test_each_attempt_signs_fresh_urls_into_a_copy() -> None:
    job = _running_job("a corgi")
    snapshot, image_keys = job_snapshot(job)
    payload = {"type": "job.stage", "data": snapshot}
    keys = [(["data", *path], key) for path, key in image_keys]

    first = with_image_urls(payload, keys, lambda key: f"https://store.test/{key}?sig=1")
    second = with_image_urls(payload, keys, lambda key: f"https://store.test/{key}?sig=2")

    assert first["data"]["stages"][1]["outputs"][1]["url"] == f"https://store.test/jobs/{job.id}/base_64/1.png?sig=1"
    assert second["data"]["stages"][1]["outputs"][1]["url"].endswith("?sig=2")
    assert payload["data"]["stages"][1]["outputs"][0]["url"] is None  # the stored payload is untouched
    assert with_image_urls(payload, [], lambda key: "unused") is payload


def test_a_client_string_is_never_taken_for_an_image() -> None:
    # Only the places the snapshot itself signed are filled: a prompt that looks like a key stays text.
    job = _running_job(f"jobs/{uuid.uuid4()}/base_64/0.png")
    _, image_keys = job_snapshot(job)
    assert [path[:2] for path, _ in image_keys] == [["stages", 1], ["stages", 1]]
