"""The OpenAPI document says what the API does: how to authenticate, what each error looks like, where a job is."""

import json
from typing import Any

import httpx
from pydantic import TypeAdapter

from tests.conftest import Client

ERROR_REF = "#/components/schemas/ErrorResponse"


def _schema(client: Client) -> dict[str, Any]:
    response = httpx.get(f"{client.system.api_url}/openapi.json", timeout=30)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_the_schema_has_the_bearer_scheme_and_the_apis_own_error_body(client: Client) -> None:
    schema = _schema(client)
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "API key",
        "description": "`Authorization: Bearer <api key>`; a key belongs to one tenant",
    }
    assert "HTTPValidationError" not in json.dumps(schema)
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert set(schema["components"]["schemas"]["ErrorDetail"]["properties"]) == {"code", "message", "field"}

    seen: set[int] = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1/"):
                assert operation["security"] == [{"ApiKey": []}], (method, path)
                assert {"401", "429", "503"} <= set(responses), (method, path)
            if "{job_id}" in path:
                assert "404" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith("4"):
                    seen.add(int(status))
                    assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (method, path)
    assert {400, 401, 404, 409, 413, 422, 429} <= seen
    create = schema["paths"]["/v1/jobs"]["post"]
    assert {"400", "404", "409", "413", "422"} <= set(create["responses"])
    assert "Location" in create["responses"]["202"]["headers"]
    assert {"Location", "Preference-Applied"} <= set(create["responses"]["200"]["headers"])
    assert "409" in schema["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]


def test_the_job_examples_are_requests_the_api_accepts(client: Client) -> None:
    from api.schemas import JobCreate
    from api.submission import resolve_generate_input
    from core.config import get_settings
    from core.presets import get_preset

    body = _schema(client)["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    examples = {name: example["value"] for name, example in body["examples"].items()}
    assert set(examples) == {"generate", "caption", "index"}
    parsed = {name: TypeAdapter(JobCreate).validate_python(value) for name, value in examples.items()}
    assert {name: job.kind for name, job in parsed.items()} == {k: k for k in examples}
    resolve_generate_input(parsed["generate"].input, get_preset(get_settings().model_preset))  # type: ignore[arg-type]
    caption = client.http.post("/v1/jobs", json=examples["caption"])
    assert caption.status_code == 202, caption.text
    assert client.wait(caption.json()["id"])["status"] == "succeeded"


def test_a_202_says_where_the_job_is_and_errors_keep_their_shape(client: Client) -> None:
    response = client.http.post(
        "/v1/jobs", json={"kind": "generate", "input": {"prompt": "a lighthouse", "resolution": 64}}
    )
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    assert location == f"/v1/jobs/{response.json()['id']}"
    assert client.http.get(location).json()["id"] == response.json()["id"]
    ended = client.http.post(
        "/v1/jobs",
        json={
            "kind": "generate",
            "input": {"prompt": "a lighthouse", "resolution": 64, "stages": {"base": {"steps": 2}}},
        },
        headers={"Prefer": "wait=60"},
    )
    assert ended.status_code == 200, ended.text
    assert ended.headers["Location"] == f"/v1/jobs/{ended.json()['id']}"
    assert ended.headers["Preference-Applied"] == "wait=60"
    client.wait(response.json()["id"])

    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer not-a-key"}):
        anonymous = httpx.get(f"{client.system.api_url}/v1/jobs", headers=headers, timeout=30)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        assert anonymous.json()["error"]["code"] == "unauthorized"
        assert anonymous.json()["error"]["field"] == "Authorization"
