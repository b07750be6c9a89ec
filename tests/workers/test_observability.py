"""JSON logs that name each job's request in every stage's lines, and one trace per job across the API and
the workers, with the real API, worker and an OTLP/HTTP collector on loopback.

Three jobs are queued while no model worker runs, each with its own ``X-Request-ID``; then one worker
starts and runs them in shared batches. A batch's leader sends its companions on, so a request id or a
trace taken from the sender instead of the job would show up here as a job's lines or spans carrying
another job's request.
"""

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from cli.services import free_port
from tests.conftest import FAST, Client
from tests.servers import ChildProcess, System, wait_until
from tests.workers.test_batching import _stage_rows

_STAGE_TASKS = {"encode_text": "imagen.encode_text", "base_64": "imagen.base", "sr_256": "imagen.sr"}


class Collector:
    """An OTLP/HTTP trace receiver on loopback: the spans it was sent, decoded."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[dict[str, Any]] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    for resource_spans in request.resource_spans:
                        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                spans.append(
                                    {
                                        "service": attributes.get("service.name"),
                                        "name": span.name,
                                        "trace_id": span.trace_id.hex(),
                                    }
                                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def in_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [span for span in list(self.spans) if span["trace_id"] == trace_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    yield collector
    collector.stop()


def _json_lines(child: ChildProcess) -> list[dict[str, Any]]:
    lines = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def _traceparents(job_ids: list[str]) -> dict[str, str | None]:
    from sqlalchemy import select

    from db.models import Job
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(select(Job.id, Job.traceparent).where(Job.id.in_([uuid.UUID(j) for j in job_ids])))
        return {str(job_id): traceparent for job_id, traceparent in rows}


def test_each_job_logs_its_request_id_and_is_one_trace_across_api_and_workers(
    system: System, client: Client, collector: Collector
) -> None:
    env = {
        **system.env,
        "IMAGEN_LOG_FORMAT": "json",
        "IMAGEN_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export spans within a fifth of a second
    }
    port = free_port()
    api = ChildProcess("api-traced", ["api", "--port", str(port)], env, system.logs).start()
    assert system.worker is not None
    system.worker.stop()  # the jobs wait, and then share passes
    worker = None
    try:

        def api_ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(api_ready, 60, "the traced API to be ready")
        headers = dict(client.http.headers)
        requests: dict[str, str] = {}
        for i in range(3):
            request_id = f"obs-{uuid.uuid4().hex[:8]}-{i}"
            body = {"kind": "generate", "input": {"prompt": f"a corgi number {i}", "seed": 40 + i, "stages": FAST}}
            body["input"]["resolution"] = 256
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/jobs", json=body, headers={**headers, "X-Request-ID": request_id}
            )
            assert response.status_code == 202, response.text
            assert response.headers["X-Request-ID"] == request_id
            requests[response.json()["id"]] = request_id
        worker_args = ["worker", "--pool", "solo", "--queues", "text,base,sr", "--hostname", "traced@%h"]
        worker = ChildProcess("worker-traced", worker_args, env, system.logs).start()
        for job_id in requests:
            assert client.wait(job_id, timeout_s=180)["status"] == "succeeded"
        jobs = list(requests)
        # They shared passes: a leader ran the others' stages and sent them on.
        assert len({row["batch_id"] for row in _stage_rows(jobs, "base_64").values()}) < len(jobs)

        # Logs: every line about a job's task carries that job's request id, for each of its stages.
        lines = _json_lines(worker)
        for job_id, request_id in requests.items():
            mine = [line for line in lines if line.get("job_id") == job_id]
            assert {line.get("stage") for line in mine} >= set(_STAGE_TASKS), mine
            assert {line.get("request_id") for line in mine} == {request_id}, mine
        api_lines = _json_lines(api)
        for request_id in requests.values():
            assert any(line.get("request_id") == request_id for line in api_lines), api_lines[-5:]

        # Traces: each job is one trace, from the API's request through a run of each of its stages.
        traceparents = _traceparents(jobs)

        def traced() -> bool:
            for job_id in jobs:
                trace_id = (traceparents[job_id] or "").split("-")[1]
                spans = collector.in_trace(trace_id)
                names = {span["name"] for span in spans if span["service"] == "imagen-queue-worker"}
                if not {f"run/{task}" for task in _STAGE_TASKS.values()} <= names:
                    return False
                if not any(span["service"] == "imagen-queue-api" for span in spans):
                    return False
            return True

        assert all(traceparents.values()), traceparents
        wait_until(traced, 30, "every job's spans to reach the collector", interval_s=0.5)
        trace_ids = {(traceparents[job_id] or "").split("-")[1] for job_id in jobs}
        assert len(trace_ids) == len(jobs)
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
        system.worker = system.new_worker()
