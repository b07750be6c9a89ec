"""Bad input gets a 4xx whose error names the problem; none of it is a 5xx."""

import json
from typing import Any

import httpx
import pytest

from tests.conftest import Client

GOOD = {"prompt": "a corgi wearing a crown"}


def _body(**input: Any) -> dict[str, Any]:
    return {"kind": "generate", "input": {**GOOD, **input}}


CASES = [
    ("missing prompt", {"kind": "generate", "input": {}}, 422, "input.prompt"),
    ("empty prompt", _body(prompt=""), 422, "input.prompt"),
    ("blank prompt", _body(prompt="   "), 422, "input.prompt"),
    ("100 kB prompt", _body(prompt="a" * 100_000), 422, "input.prompt"),
    ("steps 0", _body(stages={"base": {"steps": 0}}), 422, "input.stages.base.steps"),
    ("steps 10000", _body(stages={"sr256": {"steps": 10000}}), 422, "input.stages.sr256.steps"),
    ("guidance -1", _body(stages={"base": {"guidance_scale": -1}}), 422, "input.stages.base.guidance_scale"),
    (
        "noise level above the x4 upscaler's",
        _body(stages={"sr1024": {"noise_level": 900}}),
        422,
        "input.stages.sr1024.noise_level",
    ),
    ("a stage of another preset", _body(stages={"sr128": {"steps": 3}}), 422, "input.stages.sr128"),
    ("noise level on the base stage", _body(stages={"base": {"noise_level": 5}}), 422, "input.stages.base.noise_level"),
    ("stage params not an object", _body(stages={"base": 3}), 422, "input.stages.base"),
    ("resolution 512", _body(resolution=512), 422, "input.resolution"),
    ("num_images 50", _body(num_images=50), 422, "input.num_images"),
    ("negative seed", _body(seed=-1), 422, "input.seed"),
    ("unknown kind", {"kind": "paint", "input": GOOD}, 422, "kind"),
    ("missing kind", {"input": GOOD}, 422, "kind"),
    ("unknown field", _body(promt="typo"), 422, "input.promt"),
    ("priority 10", {**_body(), "priority": 10}, 422, "priority"),
    ("prompt not a string", _body(prompt=42), 422, "input.prompt"),
    # Postgres stores no NUL character in text or JSONB: refused up front, never a 500.
    ("NUL in the prompt", _body(prompt="a corgi\x00"), 422, "input.prompt"),
    ("NUL in the negative prompt", _body(negative_prompt="\x00"), 422, "input.negative_prompt"),
    ("NUL in a metadata value", {**_body(), "metadata": {"user": ["u-17\x00"]}}, 422, "metadata"),
    ("NUL in a metadata key", {**_body(), "metadata": {"us\x00er": 1}}, 422, "metadata"),
    ("NaN in metadata", {**_body(), "metadata": {"score": float("nan")}}, 422, "metadata"),
    ("Infinity in metadata", {**_body(), "metadata": {"nested": {"score": float("inf")}}}, 422, "metadata"),
]


@pytest.mark.parametrize(("name", "body", "status", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_field(client: Client, name: str, body: dict[str, Any], status: int, field: str) -> None:
    # Encoded here: Python's JSON writes NaN and Infinity (as some clients do), httpx's refuses them.
    content = json.dumps(body)
    response = client.http.post("/v1/jobs", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["code"] == "invalid_request"
    assert field in error["message"]


def test_an_unknown_stage_key_lists_the_presets_keys(client: Client) -> None:
    response = client.http.post("/v1/jobs", json=_body(stages={"sr512": {}}))
    assert response.status_code == 422, response.text
    assert "allowed keys: base, sr256, sr1024" in response.json()["error"]["message"]


def test_malformed_json_is_a_400(client: Client) -> None:
    response = client.http.post(
        "/v1/jobs", content=b'{"kind": "generate", "input": {', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_no_body_is_a_422(client: Client) -> None:
    response = client.http.post("/v1/jobs")
    assert response.status_code == 422
    assert "body" in response.json()["error"]["message"]


@pytest.mark.parametrize("header", [None, "Bearer iq_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer"])
def test_missing_or_wrong_api_key_is_a_401(client: Client, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = httpx.post(f"{client.system.api_url}/v1/jobs", json=_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "Authorization"
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_job_is_a_404_not_pending(client: Client) -> None:
    for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = client.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_bad_list_parameters(client: Client) -> None:
    assert client.http.get("/v1/jobs", params={"limit": 0}).json()["error"]["field"] == "limit"
    assert client.http.get("/v1/jobs", params={"status": "bogus"}).json()["error"]["field"] == "status"
    response = client.http.get("/v1/jobs", params={"cursor": "garbage"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "cursor"
