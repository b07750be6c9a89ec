"""Schemathesis sends what the OpenAPI schema allows, and much it does not, to every route of the running
API: no request, however odd, gets a 5xx, and every answer is one the schema documents (its status, its
content type, its body's schema, its headers)."""

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup

from tests.conftest import Client

EXAMPLES_PER_ROUTE = 25
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Routes that wait on purpose (an event stream) would only time the fuzzer out.
SKIPPED_PATHS = ("/v1/jobs/{job_id}/events",)


def _names_a_url(value: Any) -> bool:
    """Whether a request body holds a URL the system would connect to (an image or webhook URL)."""
    if isinstance(value, dict):
        return "url" in value or any(_names_a_url(item) for item in value.values())
    if isinstance(value, list):
        return any(_names_a_url(item) for item in value)
    return False


def test_no_request_is_a_server_error(other_client: Client) -> None:
    client = other_client  # a tenant of its own: the jobs it makes are canceled as they are made
    schema = schemathesis.openapi.from_url(f"{client.system.api_url}/openapi.json")
    headers = {"Authorization": client.http.headers["Authorization"]}
    failures: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, "the schema lists the API's routes"
    for operation in operations:
        if operation.path in SKIPPED_PATHS:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            # Tests send traffic to loopback only: a generated URL could name any host on the internet.
            if _names_a_url(case.body):
                return
            response = case.call(headers=headers, timeout=30)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")
            elif response.status_code in (200, 202) and case.formatted_path == "/v1/jobs" and case.method == "POST":
                # A generated job may ask for 8 images of 1000 steps at 1024 px: stop it before it hogs the worker.
                client.http.post(f"/v1/jobs/{response.json()['id']}/cancel")
            try:
                case.validate_response(response, checks=CONFORMANCE)
            except (Failure, FailureGroup) as exc:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}: {str(exc)[:400]}")

        call()
    assert failures == []
    assert len(statuses) >= 5 * len(operations), "each route got a good number of requests"
