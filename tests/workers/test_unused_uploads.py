"""Stored client images that no job needs are deleted: search examples at once, refused uploads later."""

import base64
import time

import httpx
from minio import Minio

from tests.api.test_quotas import LONG, _tenant
from tests.api.test_search import _png
from tests.conftest import Client
from tests.servers import System, wait_until

BUCKET = "imagen-test"


def _keys(s3: Minio, prefix: str) -> set[str]:
    return {o.object_name for o in s3.list_objects(BUCKET, prefix=prefix, recursive=True) if o.object_name}


def _b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


def test_a_search_by_image_keeps_no_copy_of_its_example(client: Client, s3: Minio) -> None:
    uploads_before = _keys(s3, "uploads/")

    def searched() -> httpx.Response | None:
        response = client.http.post("/v1/search", json={"image": _b64(_png(7001))})
        return None if response.status_code == 503 else response  # the worker may still be starting

    response = wait_until(searched, 90, "a search to be answered", 1)
    assert response.status_code == 200, response.text
    assert _keys(s3, "queries/") == set()
    assert _keys(s3, "uploads/") == uploads_before


def test_uploads_no_job_refers_to_are_deleted_once_old(system: System, s3: Minio) -> None:
    from storage.factory import process_store
    from workers.unused_uploads import delete_unused_uploads

    _, key = _tenant(max_jobs_in_flight=1)
    client = Client(system, key)
    long = client.submit(**LONG["input"])  # type: ignore[arg-type]
    try:
        used_png, refused_png = _png(7002), _png(7003)
        # Over the quota: refused after its image was stored (the quota is checked with the job counted in).
        refused = client.http.post("/v1/jobs", json={"kind": "caption", "input": {"image": _b64(refused_png)}})
        assert refused.status_code == 429, refused.text
        assert client.http.post(f"/v1/jobs/{long['id']}/cancel").status_code == 200
        client.wait(long["id"])
        accepted = client.http.post("/v1/jobs", json={"kind": "caption", "input": {"image": _b64(used_png)}})
        assert accepted.status_code == 202, accepted.text
        used_key = accepted.json()["input"]["image"]["key"]
        uploads = _keys(s3, "uploads/")
        refused_keys = {k for k in uploads if k != used_key and k.endswith(_sha(refused_png))}
        assert used_key in uploads and len(refused_keys) == 1
        process_store().put("queries/left-behind", refused_png, "image/png")  # a crashed search's example

        store = process_store()
        assert delete_unused_uploads(store, older_than_s=3600) == 0, "young uploads are kept"
        time.sleep(1.1)
        deleted = delete_unused_uploads(store, older_than_s=1)
        remaining = _keys(s3, "uploads/")
        assert used_key in remaining, "an upload a job refers to is kept"
        assert not refused_keys & remaining, "the refused submission's upload is gone"
        assert _keys(s3, "queries/") == set()
        assert deleted >= 2
        assert client.wait(accepted.json()["id"])["status"] == "succeeded"
    finally:
        client.http.close()


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
