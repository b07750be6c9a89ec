"""Caption and index jobs, and search, through the API and real workers (Postgres with pgvector)."""

import base64
import io
import random
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import FAST, Client


def _png(seed: int, size: int = 96) -> bytes:
    """A varied test picture: a background colour, shapes and a little noise, all from ``seed``."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(1, 5)):
        box = sorted(rng.randrange(size) for _ in range(2)) + sorted(rng.randrange(size) for _ in range(2))
        x0, x1, y0, y1 = box
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1 + 1, y1 + 1), fill=colour)
    for _ in range(size):
        image.putpixel((rng.randrange(size), rng.randrange(size)), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


def _run(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = client.wait(response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_caption_is_non_empty_and_reproducible(client: Client) -> None:
    body = {"kind": "caption", "input": {"image": _b64(_png(1)), "max_new_tokens": 12}}
    first, second = _run(client, body), _run(client, body)
    caption = first["output"]["caption"]
    assert isinstance(caption, str) and caption.strip()
    assert second["output"]["caption"] == caption
    assert first["input"]["image"]["width"] == 96 and first["input"]["image"]["key"].startswith("uploads/")
    beams = _run(client, {"kind": "caption", "input": {"image": _b64(_png(1)), "num_beams": 3}})
    assert beams["output"]["caption"].strip()


def test_search_by_image_finds_it_first_and_by_text_ranks_k(client: Client) -> None:
    collection = f"c-{uuid.uuid4().hex[:8]}"
    pictures = [_png(100 + i) for i in range(30)]
    submitted = []
    for i, data in enumerate(pictures):
        body = {
            "kind": "index",
            "input": {"image": _b64(data), "text": f"picture number {i}", "collection": collection},
            "metadata": {"n": i},
        }
        response = client.http.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        submitted.append(response.json()["id"])
    jobs = [client.wait(job_id) for job_id in submitted]
    assert all(j["status"] == "succeeded" for j in jobs), [j for j in jobs if j["status"] != "succeeded"]

    for i in (0, 7, 29):
        response = client.http.post("/v1/search", json={"image": _b64(pictures[i]), "collection": collection, "k": 5})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert results[0]["job_id"] == jobs[i]["id"]
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert results[0]["metadata"] == {"n": i} and results[0]["text"] == f"picture number {i}"
        assert results[1]["score"] < results[0]["score"]

    response = client.http.post("/v1/search", json={"text": "a picture", "collection": collection, "k": 7})
    results = response.json()["results"]
    assert len(results) == 7
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert {r["job_id"] for r in results} <= {j["id"] for j in jobs}
    downloaded = httpx.get(results[0]["image_url"], timeout=30)
    assert downloaded.status_code == 200
    assert downloaded.content in pictures


def test_another_tenant_neither_finds_nor_reads_the_images(client: Client, other_client: Client) -> None:
    collection = f"private-{uuid.uuid4().hex[:8]}"
    data = _png(7)
    job = _run(client, {"kind": "index", "input": {"image": _b64(data), "collection": collection}})
    mine = client.http.post("/v1/search", json={"image": _b64(data), "collection": collection}).json()["results"]
    assert [r["job_id"] for r in mine] == [job["id"]]
    theirs = other_client.http.post("/v1/search", json={"image": _b64(data), "collection": collection})
    assert theirs.status_code == 200 and theirs.json()["results"] == []

    generated = client.wait(client.submit(seed=4, resolution=64, stages=FAST)["id"])
    artifact = {"artifact": {"job_id": generated["id"], "stage": "base_64", "index": 0}}
    response = other_client.http.post("/v1/jobs", json={"kind": "caption", "input": {"image": artifact}})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["field"].startswith("input.image")
    own = _run(client, {"kind": "caption", "input": {"image": artifact}})
    assert own["input"]["image"]["key"] == f"jobs/{generated['id']}/base_64/0.png"


def test_generate_with_caption_and_index_feeds_search(client: Client) -> None:
    job = client.wait(client.submit(seed=77, resolution=256, num_images=2, stages=FAST, caption=True, index=True)["id"])
    assert job["status"] == "succeeded", job
    assert [s["name"] for s in job["stages"]] == ["encode_text", "base_64", "sr_256", "caption", "embed"]
    images = job["output"]["images"]
    assert len(images) == 2 and all(i["caption"] and i["caption"].strip() for i in images)

    png = httpx.get(images[1]["url"], timeout=30).content
    results = client.http.post("/v1/search", json={"image": _b64(png), "k": 3}).json()["results"]
    assert results[0]["job_id"] == job["id"]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert results[0]["caption"] == images[1]["caption"]
    assert results[0]["text"] == "a corgi wearing a crown"


def _truncated_png() -> bytes:
    data = _png(3, size=200)
    return data[: len(data) // 2]


def _huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_IMAGES = [
    ("not base64", {"base64": "!!! not base64 !!!"}, "input.image"),
    ("not an image", _b64(b"hello, I am a text file" * 10), "input.image"),
    ("truncated PNG", _b64(_truncated_png()), "input.image"),
    ("20000x20000", _b64(_huge_png()), "input.image"),
    ("loopback URL", {"url": "http://127.0.0.1:9/cat.png"}, "input.image"),
    ("metadata URL", {"url": "http://169.254.169.254/latest/meta-data"}, "input.image"),
    ("two forms at once", {"base64": "aGk=", "url": "https://example.com/a.png"}, "input.image"),
]


@pytest.mark.parametrize(("name", "image", "field"), BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_image_input_is_a_clear_4xx(client: Client, name: str, image: dict[str, Any], field: str) -> None:
    response = client.http.post("/v1/jobs", json={"kind": "caption", "input": {"image": image}})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["field"].startswith(field), error
    assert error["message"]


def test_search_needs_exactly_one_query(client: Client) -> None:
    for body, field in (
        ({}, "text"),
        ({"text": "a", "image": _b64(_png(1))}, "text"),
        ({"text": "a", "k": 0}, "k"),
        ({"text": "a", "k": 101}, "k"),
        ({"text": "a", "collection": "../x"}, "collection"),
    ):
        response = client.http.post("/v1/search", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["field"] == field
