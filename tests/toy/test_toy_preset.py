"""The trained `toy` preset end to end: the committed weights, loaded by a real worker, do what they are asked.

A second system (its own Postgres, Redis, S3, API and workers) runs with IMAGEN_MODEL_PRESET=toy. Every
image is read back by the analytic checker of training/checker.py, which does not use any model: a
shape of the wrong colour, kind or place fails the test. Seeds are fixed, so the outcome is the same on
every run with the same weights and thread count.
"""

import base64
import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Client
from tests.servers import REPO, System
from training import world
from training.checker import read

# (prompt, what it asks for): a small fixed set across colours, shapes, positions and wordings.
PROMPTS: list[tuple[str, tuple[str, str, str]]] = [
    ("a blue square at the top", ("blue", "square", "top")),
    ("a red circle on the left", ("red", "circle", "left")),
    ("on the right there is a green triangle", ("green", "triangle", "right")),
    ("a yellow circle at the bottom on a dark background", ("yellow", "circle", "bottom")),
    ("an orange square in the center", ("orange", "square", "center")),
    ("the purple triangle is at the top", ("purple", "triangle", "top")),
]


def _cli(system: System, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=system.env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def toy_system() -> Iterator[System]:
    """The whole system, running the toy preset, set up with the commands an operator runs."""
    system = System(preset="toy")
    try:
        system.start_stores()
        _cli(system, "migrate")
        _cli(system, "models", "build-toy")
        system.start_processes()
        yield system
    finally:
        system.stop()


@pytest.fixture(scope="module")
def toy_client(toy_system: System) -> Iterator[Client]:
    key = _cli(toy_system, "keys", "create", "--tenant", f"toy-{uuid.uuid4().hex[:6]}").strip()
    client = Client(toy_system, key)
    yield client
    client.http.close()


def _run(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = client.wait(response.json()["id"], timeout_s=180)
    assert job["status"] == "succeeded", job
    return job


def _image(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)).convert("RGB")


@pytest.fixture(scope="module")
def generated(toy_client: Client) -> dict[str, tuple[dict[str, Any], Image.Image]]:
    """Each prompt's job and its final image."""
    results = {}
    for index, (prompt, _) in enumerate(PROMPTS):
        job = _run(toy_client, {"kind": "generate", "input": {"prompt": prompt, "seed": 100 + index}})
        assert [stage["name"] for stage in job["stages"]] == ["encode_text", "base_32", "sr_128"]
        (image,) = job["output"]["images"]
        results[prompt] = (job, _image(image["url"]))
    return results


def test_a_blue_square_at_the_top_is_drawn(generated: dict[str, tuple[dict[str, Any], Image.Image]]) -> None:
    job, image = generated["a blue square at the top"]
    assert image.size == (128, 128)
    assert job["input"]["resolution"] == 128
    reading = read(image)
    assert (reading.colour, reading.shape, reading.position) == ("blue", "square", "top"), reading


def test_prompts_are_followed(generated: dict[str, tuple[dict[str, Any], Image.Image]]) -> None:
    readings = {prompt: read(generated[prompt][1]) for prompt, _ in PROMPTS}
    right = [prompt for prompt, wanted in PROMPTS if readings[prompt].matches(world.Scene(*wanted, "light"))["all"]]
    # A high pass rate, not perfection: bench/quality.py measures the rate over many more prompts.
    assert len(right) >= len(PROMPTS) - 1, {prompt: readings[prompt] for prompt, _ in PROMPTS}


def test_the_captioner_names_colour_and_shape(
    toy_client: Client, generated: dict[str, tuple[dict[str, Any], Image.Image]]
) -> None:
    job, _ = generated["a blue square at the top"]
    artifact = {"job_id": job["id"], "stage": "sr_128", "index": 0}
    captioned = _run(toy_client, {"kind": "caption", "input": {"image": {"artifact": artifact}}})
    named = world.parse_caption(captioned["output"]["caption"])
    assert named.get("colour") == "blue" and named.get("shape") == "square", captioned["output"]


def test_search_ranks_the_blue_square_first(
    toy_client: Client, generated: dict[str, tuple[dict[str, Any], Image.Image]]
) -> None:
    collection = f"toy-{uuid.uuid4().hex[:8]}"
    for prompt, _ in PROMPTS:
        job, _ = generated[prompt]
        artifact = {"job_id": job["id"], "stage": "sr_128", "index": 0}
        _run(toy_client, {"kind": "index", "input": {"image": {"artifact": artifact}, "collection": collection}})
    # A few true scenes that share the colour or the shape, uploaded as images.
    for scene in (
        world.Scene("blue", "circle", "top", "light"),
        world.Scene("red", "square", "top", "light"),
        world.Scene("blue", "triangle", "bottom", "dark"),
    ):
        buffer = io.BytesIO()
        pixels = (world.render([scene], 128)[0] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(buffer, format="PNG")
        image = {"base64": base64.b64encode(buffer.getvalue()).decode()}
        _run(toy_client, {"kind": "index", "input": {"image": image, "collection": collection}})

    response = toy_client.http.post("/v1/search", json={"text": "blue square", "collection": collection, "k": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    wanted = generated["a blue square at the top"][1]
    assert np.array_equal(np.asarray(_image(results[0]["image_url"])), np.asarray(wanted)), results
