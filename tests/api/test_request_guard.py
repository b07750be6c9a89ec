"""Every request gets an id and a capped body, and no error leaves the API outside the contract's shape."""

from collections.abc import Iterator

import httpx

from tests.servers import System


def test_a_body_over_the_cap_is_a_413_before_authentication(system: System) -> None:
    from api.request_guard import MAX_REQUEST_BYTES

    body = b"x" * (MAX_REQUEST_BYTES + 1)
    response = httpx.post(f"{system.api_url}/v1/jobs", content=body, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "payload_too_large",
        "message": f"the request body is over {MAX_REQUEST_BYTES} bytes",
        "field": "body",
    }
    assert response.headers["x-request-id"]


def test_a_body_without_a_length_is_capped_as_it_arrives(system: System) -> None:
    from api.request_guard import MAX_REQUEST_BYTES

    def chunks() -> Iterator[bytes]:
        chunk = b"x" * (1024 * 1024)
        for _ in range(MAX_REQUEST_BYTES // len(chunk) + 2):
            yield chunk

    response = httpx.post(
        f"{system.api_url}/v1/jobs",
        content=chunks(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer iq_unknown"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def test_the_request_id_is_the_clients_when_plain_else_a_new_one(system: System) -> None:
    given = httpx.get(f"{system.api_url}/healthz", headers={"X-Request-ID": "trace-7.a_b"})
    assert given.headers["x-request-id"] == "trace-7.a_b"
    replaced = httpx.get(f"{system.api_url}/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert len(replaced.headers["x-request-id"]) == 32
    assert httpx.get(f"{system.api_url}/healthz").headers["x-request-id"] != replaced.headers["x-request-id"]


def test_an_unexpected_error_is_a_json_500_with_the_request_id(system: System) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app()

    def fail() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/fail", fail)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/fail", headers={"X-Request-ID": "req-42"})
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert "req-42" in response.json()["error"]["message"] and "a bug" not in response.text
        assert response.headers["x-request-id"] == "req-42"
        assert client.get("/healthz").status_code == 200, "the app goes on serving"
