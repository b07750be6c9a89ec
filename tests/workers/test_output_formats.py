"""A generate job's final images in the format it asked for; its intermediates stay lossless PNG."""

import io

import httpx
import pytest
from minio import Minio
from PIL import Image

from tests.conftest import FAST, Client, object_keys


@pytest.mark.parametrize(
    ("output_format", "pillow_format", "extension"), [("webp", "WEBP", "webp"), ("jpeg", "JPEG", "jpg")]
)
def test_final_images_take_the_output_format(
    client: Client, s3: Minio, output_format: str, pillow_format: str, extension: str
) -> None:
    job = client.submit(seed=31, stages=FAST, resolution=256, output_format=output_format, output_quality=80)
    assert job["input"]["output_format"] == output_format and job["input"]["output_quality"] == 80
    job = client.wait(job["id"])
    assert job["status"] == "succeeded", job

    (final,) = job["output"]["images"]
    response = httpx.get(final["url"], timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"image/{output_format}"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == pillow_format
        assert image.size == (final["width"], final["height"]) == (256, 256)
    assert object_keys(s3, job["id"]) == sorted(
        [
            f"jobs/{job['id']}/text/embeds.safetensors",
            f"jobs/{job['id']}/base_64/0.png",
            f"jobs/{job['id']}/sr_256/0.{extension}",
        ]
    )
    base = next(s for s in job["stages"] if s["name"] == "base_64")["outputs"][0]
    with Image.open(io.BytesIO(httpx.get(base["url"], timeout=30).content)) as image:
        assert image.format == "PNG", "the next stage reads the intermediate: it stays lossless"


def test_png_stays_the_default_and_takes_no_quality(client: Client) -> None:
    job = client.http.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "x", "resolution": 64}})
    assert job.status_code == 202, job.text
    assert job.json()["input"]["output_format"] == "png" and job.json()["input"]["output_quality"] is None
    client.http.post(f"/v1/jobs/{job.json()['id']}/cancel")

    for given, field in [
        ({"output_quality": 80}, "input.output_quality"),
        ({"output_format": "jpeg", "output_quality": 0}, "input.output_quality"),
        ({"output_format": "webp", "output_quality": 101}, "input.output_quality"),
        ({"output_format": "gif"}, "input.output_format"),
    ]:
        response = client.http.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "x", **given}})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field, response.json()
