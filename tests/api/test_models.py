"""GET /v1/models: every preset, the active one, and whether its weights are on this machine."""

import httpx

from tests.conftest import Client


def test_models_lists_every_preset_and_the_active_one(client: Client) -> None:
    response = client.http.get("/v1/models")
    assert response.status_code == 200, response.text
    catalog = response.json()
    assert catalog["active"] == "tiny"
    presets = {preset["name"]: preset for preset in catalog["presets"]}
    assert set(presets) == {"tiny", "toy", "deepfloyd-if"}
    assert [name for name, preset in presets.items() if preset["active"]] == ["tiny"]
    # The test system builds tiny into its models dir, and nothing else; DeepFloyd is never downloaded.
    assert presets["tiny"]["available"] is True
    assert presets["toy"]["available"] is False
    assert presets["deepfloyd-if"]["available"] is False


def test_models_describe_stages_captioner_and_embedder(client: Client) -> None:
    presets = {preset["name"]: preset for preset in client.http.get("/v1/models").json()["presets"]}
    assert presets["toy"]["stages"] == [
        {
            "name": "base_32",
            "resolution": 32,
            "request_key": "base",
            "kind": "if",
            "default_steps": 20,
            "default_guidance": 4.0,
            "default_noise_level": None,
            "max_noise_level": None,
        },
        {
            "name": "sr_128",
            "resolution": 128,
            "request_key": "sr128",
            "kind": "if_sr",
            "default_steps": 10,
            "default_guidance": 1.0,
            "default_noise_level": 100,
            "max_noise_level": 400,
        },
    ]
    tiny = presets["tiny"]
    assert [(s["name"], s["request_key"], s["kind"]) for s in tiny["stages"]] == [
        ("base_64", "base", "if"),
        ("sr_256", "sr256", "if_sr"),
        ("sr_1024", "sr1024", "sd_upscale"),
    ]
    assert tiny["captioner"] == {"source": "tiny/caption"}
    assert tiny["embedder"] == {"model_id": "tiny-clip-1", "dim": 64}
    assert presets["deepfloyd-if"]["embedder"] == {"model_id": "openai/clip-vit-base-patch32", "dim": 512}


def test_models_need_an_api_key(client: Client) -> None:
    response = httpx.get(f"{client.system.api_url}/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "Authorization"


def test_models_are_in_the_openapi_schema(client: Client) -> None:
    schema = httpx.get(f"{client.system.api_url}/openapi.json").json()
    assert "/v1/models" in schema["paths"]
    stages = schema["components"]["schemas"]["GenerateInput"]["properties"]["stages"]
    assert stages["additionalProperties"]["$ref"].endswith("/StageParameters")
    assert "toy: base, sr128" in stages["description"]
