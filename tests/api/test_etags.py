"""GET /v1/jobs/{id} carries an ETag: a client that sends it back gets a 304 until the job changes."""

from tests.conftest import FAST, Client

# A job whose base stage runs long enough to be looked at while it runs (it is canceled before it ends).
LONG = {"base": {"steps": 300}}


def test_an_unchanged_job_is_a_304_without_a_body(client: Client) -> None:
    job = client.submit(seed=71, resolution=64, stages=FAST)
    done = client.wait(job["id"])
    first = client.http.get(f"/v1/jobs/{job['id']}")
    etag = first.headers["etag"]
    assert first.status_code == 200 and etag.startswith('W/"'), first.headers

    again = client.http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert again.status_code == 304, again.text
    assert again.content == b"" and again.headers["etag"] == etag
    # Any of several tags, a strong spelling of the weak one, or "*" match; another tag does not.
    strong = etag.removeprefix("W/")
    for header in (f'"other", {etag}', strong, "*"):
        assert client.http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": header}).status_code == 304
    other = client.http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200 and other.json()["id"] == done["id"]
    # The body is the same job, whatever its presigned URLs' signatures.
    assert other.json()["status"] == "succeeded" and other.json()["output"]["images"][0]["url"]


def test_the_etag_changes_when_the_job_does(client: Client) -> None:
    job = client.submit(seed=72, resolution=64, stages=LONG)
    queued_tag = client.http.get(f"/v1/jobs/{job['id']}").headers["etag"]
    running = client.wait_stage(job["id"], "base_64", min_progress=0.01)
    now = client.http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": queued_tag})
    assert now.status_code == 200 and now.headers["etag"] != queued_tag
    assert now.json()["stages"][1]["status"] == running["stages"][1]["status"] == "running"

    assert client.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    canceled = client.wait(job["id"])
    assert canceled["status"] == "canceled"
    after = client.http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": now.headers["etag"]})
    assert after.status_code == 200 and after.json()["status"] == "canceled"


def test_another_tenants_job_is_a_404_whatever_the_etag(client: Client, other_client: Client) -> None:
    job = client.submit(seed=73, resolution=64, stages=FAST)
    etag = client.http.get(f"/v1/jobs/{job['id']}").headers["etag"]
    response = other_client.http.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert response.status_code == 404
    client.wait(job["id"])
