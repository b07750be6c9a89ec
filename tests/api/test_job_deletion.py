"""DELETE /v1/jobs/{id}: a finished job's objects and index entries go, its row stays as a tombstone."""

import base64
import time
import uuid

import httpx
from minio import Minio

from tests.api.test_quotas import LONG
from tests.api.test_search import _png
from tests.conftest import FAST, Client, object_keys
from tests.servers import System, wait_until

BUCKET = "imagen-test"


def _embeddings_of(job_id: str) -> int:
    from sqlalchemy import func, select

    from db.models import Embedding
    from db.session import session_scope

    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Embedding.job_id == uuid.UUID(job_id))) or 0)


def _stored(s3: Minio, key: str) -> bool:
    return any(o.object_name == key for o in s3.list_objects(BUCKET, prefix=key))


def test_deleting_a_job_removes_its_objects_and_index_entries_and_keeps_a_tombstone(client: Client, s3: Minio) -> None:
    job = client.wait(client.submit(seed=11, stages=FAST, caption=True, index=True)["id"])
    assert job["status"] == "succeeded", job
    final_url = job["output"]["images"][0]["url"]
    assert httpx.get(final_url, timeout=30).status_code == 200
    assert object_keys(s3, job["id"]) != [] and _embeddings_of(job["id"]) == 1

    response = client.http.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200, response.text
    deleted = response.json()
    assert deleted["id"] == job["id"] and deleted["status"] == "succeeded"
    assert deleted["deleted_at"] is not None and deleted["output"] is None
    assert all(stage["outputs"] == [] for stage in deleted["stages"])
    assert object_keys(s3, job["id"]) == []
    assert _embeddings_of(job["id"]) == 0
    assert httpx.get(final_url, timeout=30).status_code == 404

    assert client.job(job["id"]) == deleted
    again = client.http.delete(f"/v1/jobs/{job['id']}")
    assert again.status_code == 200 and again.json() == deleted, "a second DELETE answers the same"
    retry = client.http.post(f"/v1/jobs/{job['id']}/retry")
    assert retry.status_code == 409 and retry.json()["error"]["code"] == "conflict"
    artifact = {"artifact": {"job_id": job["id"], "stage": "sr_1024", "index": 0}}
    caption = client.http.post("/v1/jobs", json={"kind": "caption", "input": {"image": artifact}})
    assert caption.status_code == 404 and caption.json()["error"]["field"] == "input.image.artifact"


def test_an_unfinished_job_is_a_conflict_and_another_tenants_job_is_not_found(
    client: Client, other_client: Client
) -> None:
    job = client.http.post("/v1/jobs", json=LONG).json()
    try:
        response = client.http.delete(f"/v1/jobs/{job['id']}")
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "conflict" and error["field"] == "status"
        assert "cancel it first" in error["message"]
        assert other_client.http.delete(f"/v1/jobs/{job['id']}").status_code == 404
        assert client.http.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    finally:
        client.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.wait(job["id"])["status"] == "canceled"
    canceled = client.http.delete(f"/v1/jobs/{job['id']}")
    assert canceled.status_code == 200 and canceled.json()["deleted_at"] is not None
    assert other_client.http.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_a_deleted_caption_jobs_upload_goes_once_no_other_job_uses_it(client: Client, s3: Minio) -> None:
    from storage.factory import process_store
    from workers.unused_uploads import delete_unused_uploads

    image = {"base64": base64.b64encode(_png(9101)).decode()}
    first = client.http.post("/v1/jobs", json={"kind": "caption", "input": {"image": image}}).json()
    second = client.http.post("/v1/jobs", json={"kind": "caption", "input": {"image": image}}).json()
    upload = first["input"]["image"]["key"]
    assert upload == second["input"]["image"]["key"] and upload.startswith("uploads/")
    client.wait(first["id"]), client.wait(second["id"])

    assert client.http.delete(f"/v1/jobs/{first['id']}").status_code == 200
    time.sleep(1.1)
    delete_unused_uploads(process_store(), older_than_s=1)
    assert _stored(s3, upload), "the second job still reads it"
    assert client.http.delete(f"/v1/jobs/{second['id']}").status_code == 200
    # Younger than IMAGEN_UNUSED_UPLOAD_TTL_S (a submission of the same bytes may be about to commit): the
    # unused-uploads sweep deletes it, now that no job that is not deleted refers to it.
    delete_unused_uploads(process_store(), older_than_s=1)
    assert not _stored(s3, upload)


def test_a_delete_the_store_interrupts_is_finished_by_the_sweeper(system: System, client: Client, s3: Minio) -> None:
    job = client.wait(client.submit(seed=12, stages=FAST, resolution=64)["id"])
    assert job["status"] == "succeeded", job
    keys = object_keys(s3, job["id"])
    assert keys != []
    system.s3_proxy.down()
    try:
        response = client.http.delete(f"/v1/jobs/{job['id']}")
        assert response.status_code == 200, response.text
        assert response.json()["deleted_at"] is not None and response.json()["output"] is None
        assert object_keys(s3, job["id"]) == keys, "the store was unreachable: its objects are still there"
    finally:
        system.s3_proxy.up()
    wait_until(lambda: object_keys(s3, job["id"]) == [], 30, "the sweeper to delete the job's objects", 0.5)
    assert client.job(job["id"])["deleted_at"] == response.json()["deleted_at"]
