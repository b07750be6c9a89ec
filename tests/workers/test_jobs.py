"""Generate jobs through the real API, a real worker process, Postgres, Redis and an S3 server."""

import io
import time

import httpx
from minio import Minio
from PIL import Image

from tests.conftest import FAST, Client, object_keys


def _png(url: str) -> bytes:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


def test_generate_job_runs_the_whole_cascade(client: Client, s3: Minio) -> None:
    job = client.submit(seed=7, stages=FAST)
    assert job["status"] == "queued"
    assert [s["name"] for s in job["stages"]] == ["encode_text", "base_64", "sr_256", "sr_1024"]

    seen = {job["status"]}
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.job(job["id"])
        seen.add(job["status"])
    assert job["status"] == "succeeded", job
    assert {"queued", "running", "succeeded"} <= seen | {"queued"}
    assert "running" in seen
    assert job["started_at"] and job["finished_at"] and job["error"] is None

    for stage in job["stages"]:
        assert stage["status"] == "succeeded"
        assert stage["progress"] == 1.0
        assert stage["attempts"] == 1
        assert stage["duration_ms"] is not None and stage["duration_ms"] > 0
        assert stage["queued_at"] <= stage["started_at"] <= stage["finished_at"]

    sizes = {}
    for stage in job["stages"][1:]:
        (output,) = stage["outputs"]
        image = Image.open(io.BytesIO(_png(output["url"])))
        assert image.format == "PNG"
        sizes[stage["name"]] = image.size
        assert (output["width"], output["height"]) == image.size
    assert sizes == {"base_64": (64, 64), "sr_256": (256, 256), "sr_1024": (1024, 1024)}

    (final,) = job["output"]["images"]
    assert (final["width"], final["height"], final["seed"]) == (1024, 1024, 7)
    assert Image.open(io.BytesIO(_png(final["url"]))).size == (1024, 1024)

    assert object_keys(s3, job["id"]) == sorted(
        [
            f"jobs/{job['id']}/text/embeds.safetensors",
            f"jobs/{job['id']}/base_64/0.png",
            f"jobs/{job['id']}/sr_256/0.png",
            f"jobs/{job['id']}/sr_1024/0.png",
        ]
    )


def test_resolution_256_stops_after_stage_two_and_seeds_reproduce(client: Client) -> None:
    # One after another: jobs queued together may share a forward pass, which can move a pixel by a level
    # (README, "Batched denoising"); each of these runs alone, as its twin did.
    jobs = [client.wait(client.submit(seed=seed, resolution=256, stages=FAST)["id"]) for seed in (1234, 1234, 1235)]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, jobs
    assert [s["name"] for s in jobs[0]["stages"]] == ["encode_text", "base_64", "sr_256"]

    finals = [_png(j["output"]["images"][0]["url"]) for j in jobs]
    assert Image.open(io.BytesIO(finals[0])).size == (256, 256)
    assert finals[0] == finals[1], "the same seed must give byte-identical images"
    assert finals[0] != finals[2], "another seed must give another image"
    base = [_png(j["stages"][1]["outputs"][0]["url"]) for j in jobs]
    assert base[0] == base[1] != base[2]


def test_several_images_each_have_their_own_seed(client: Client) -> None:
    job = client.wait(client.submit(seed=50, num_images=2, resolution=64, stages=FAST)["id"])
    assert job["status"] == "succeeded", job
    images = job["output"]["images"]
    assert [(i["width"], i["seed"]) for i in images] == [(64, 50), (64, 51)]
    assert _png(images[0]["url"]) != _png(images[1]["url"])


def test_cancel_a_running_job_stops_it_before_the_next_stage(client: Client, s3: Minio) -> None:
    # Many base steps, so the cancel lands while stage I is denoising.
    job = client.submit(seed=3, stages={"base": {"steps": 400}, "sr256": {"steps": 2}, "sr1024": {"steps": 2}})
    client.wait_stage(job["id"], "base_64", min_progress=0.01)
    response = client.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] in ("running", "canceled")

    job = client.wait(job["id"], timeout_s=30)
    assert job["status"] == "canceled"
    stages = {s["name"]: s for s in job["stages"]}
    assert stages["base_64"]["status"] == "canceled"
    assert stages["base_64"]["progress"] < 1.0, "the denoising loop stopped early"
    for name in ("sr_256", "sr_1024"):
        assert stages[name]["status"] == "canceled"
        assert stages[name]["attempts"] == 0, f"{name} must never start"
    assert job["output"] is None
    assert object_keys(s3, job["id"]) == [f"jobs/{job['id']}/text/embeds.safetensors"]


def test_list_jobs_pages_newest_first(client: Client) -> None:
    ids = [client.submit(seed=i, resolution=64, stages=FAST)["id"] for i in range(3)]
    page = client.http.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert page["next_cursor"]
    rest = client.http.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert rest["items"][0]["id"] == ids[0]
    for job_id in ids:
        client.wait(job_id)
    filtered = client.http.get("/v1/jobs", params={"status": "succeeded", "kind": "generate", "limit": 100}).json()
    assert set(ids) <= {j["id"] for j in filtered["items"]}
    assert {(j["status"], j["kind"]) for j in filtered["items"]} == {("succeeded", "generate")}


def test_another_tenants_job_is_a_404(client: Client, other_client: Client) -> None:
    job = client.submit(seed=9, resolution=64, stages=FAST)
    for method, path in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry")):
        response = other_client.http.request(method, f"/v1/jobs/{job['id']}{path}")
        assert response.status_code == 404, (method, path, response.text)
    assert job["id"] not in [j["id"] for j in other_client.http.get("/v1/jobs").json()["items"]]
    assert client.wait(job["id"])["status"] == "succeeded"


def test_retry_is_only_for_failed_or_canceled_jobs(client: Client) -> None:
    job = client.wait(client.submit(seed=11, resolution=64, stages=FAST)["id"])
    response = client.http.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_a_canceled_job_retried_resumes_from_its_first_unfinished_stage(client: Client) -> None:
    job = client.submit(seed=21, resolution=256, stages={"base": {"steps": 3}, "sr256": {"steps": 300}})
    client.wait_stage(job["id"], "sr_256", min_progress=0.01)
    client.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.wait(job["id"])["status"] == "canceled"

    retried = client.http.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    running = client.wait_stage(job["id"], "sr_256", min_progress=0.01)
    stages = {s["name"]: s for s in running["stages"]}
    assert stages["encode_text"]["attempts"] == 1 and stages["base_64"]["attempts"] == 1, (
        "finished stages are not run again"
    )
    assert stages["sr_256"]["attempts"] == 1, "a retry starts with fresh attempts"
    client.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.wait(job["id"])["status"] == "canceled"
