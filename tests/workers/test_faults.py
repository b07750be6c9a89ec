"""Faults lose no job and no image: a SIGKILLed worker, a restarted (emptied) broker."""

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from minio import Minio

from tests.conftest import FAST, Client, object_keys
from tests.servers import System, wait_until


def _artifact_rows(job_id: str) -> list[tuple[str, int]]:
    from sqlalchemy import select

    from db.models import Artifact
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(select(Artifact.stage, Artifact.index).where(Artifact.job_id == job_id))
        return sorted((stage, index) for stage, index in rows)


@pytest.fixture
def restore_worker(system: System) -> Iterator[None]:
    """Whatever a test does to the worker, the next test finds one running."""
    yield
    if system.worker is None or not system.worker.alive():
        system.worker = system.new_worker()


def test_killed_worker_mid_stage_job_still_succeeds_without_duplicate_outputs(
    system: System, client: Client, s3: Minio, restore_worker: None
) -> None:
    job = client.submit(seed=5, stages={"base": {"steps": 3}, "sr256": {"steps": 30}, "sr1024": {"steps": 2}})
    client.wait_stage(job["id"], "sr_256", min_progress=0.05)
    assert system.worker is not None
    system.worker.kill()  # SIGKILL while sr_256 is denoising: no ack, no cleanup

    # The stage is left "running" with a heartbeat that no longer moves; a new worker comes up and the
    # sweeper (beat) enqueues the job again once the heartbeat is older than IMAGEN_REQUEUE_AFTER_S.
    system.worker = system.new_worker("worker-2")
    job = client.wait(job["id"], timeout_s=180)
    assert job["status"] == "succeeded", job

    stages = {s["name"]: s for s in job["stages"]}
    assert stages["sr_256"]["attempts"] == 2, "the killed attempt and the one that finished"
    assert stages["encode_text"]["attempts"] == 1 and stages["base_64"]["attempts"] == 1, (
        "stages that had finished before the kill are not run again"
    )
    assert stages["sr_1024"]["attempts"] == 1
    expected = sorted(
        [
            f"jobs/{job['id']}/text/embeds.safetensors",
            f"jobs/{job['id']}/base_64/0.png",
            f"jobs/{job['id']}/sr_256/0.png",
            f"jobs/{job['id']}/sr_1024/0.png",
        ]
    )
    assert object_keys(s3, job["id"]) == expected
    assert _artifact_rows(job["id"]) == [("base_64", 0), ("encode_text", 0), ("sr_1024", 0), ("sr_256", 0)]


@pytest.fixture
def restore_broker(system: System) -> Iterator[None]:
    """Whatever a test does to Redis, the next test finds it running."""
    yield
    if system.redis.process is None:
        system.redis.start()


def test_restarted_broker_loses_no_job(
    system: System, client: Client, restore_worker: None, restore_broker: None
) -> None:
    # A search makes the API wait on a Celery result, which leaves Celery's result consumer subscribed
    # in the API process: a submission must not go through it (with Redis down it would wait out its
    # reconnects, about 20 s, and answer 500).
    assert client.http.post("/v1/search", json={"text": "a corgi"}).status_code == 200
    assert system.worker is not None
    system.worker.stop()  # nobody consumes: the first job waits in a Redis queue
    queued = client.submit(seed=31, resolution=64, stages=FAST)

    system.redis.stop()  # Redis keeps nothing on disk here: the queued message is gone
    # Submitting while the broker is down still records the job (202) at once; it is enqueued later.
    # (The short client timeouts below fail the test where the API would hang on the broker.)
    offline = [client.submit(seed=seed, resolution=64, stages=FAST, timeout_s=5) for seed in (32, 33)]
    assert [job["status"] for job in offline] == ["queued", "queued"]
    readiness = httpx.get(f"{system.api_url}/readyz", timeout=5)
    assert readiness.status_code == 503 and readiness.json()["checks"]["broker"].startswith("error")
    assert "Error" not in readiness.text and "redis" not in readiness.text.lower(), "no internals to anonymous callers"
    search = client.http.post("/v1/search", json={"text": "a corgi"}, timeout=10)
    assert search.status_code == 503 and "unreachable" in search.json()["error"]["message"], search.text

    system.redis.start()  # same port, empty
    system.worker = system.new_worker("worker-3")
    for job_id in (queued["id"], *(job["id"] for job in offline)):
        job = client.wait(job_id, timeout_s=120)
        assert job["status"] == "succeeded", job
        assert [s["attempts"] for s in job["stages"]] == [1, 1]
    wait_until(
        lambda: httpx.get(f"{system.api_url}/readyz", timeout=10).status_code == 200, 30, "the API to be ready again"
    )
    assert client.http.post("/v1/search", json={"text": "a corgi"}).status_code == 200, "search is back"


def test_stage_that_keeps_dying_fails_the_job_with_its_reason(
    system: System, client: Client, restore_worker: None
) -> None:
    job = client.submit(seed=8, resolution=64, stages={"base": {"steps": 1000}})
    for attempt in range(1, 4):
        client.wait_stage(job["id"], "base_64", min_progress=0.001, timeout_s=90, attempt=attempt)
        assert system.worker is not None
        system.worker.kill()
        system.worker = system.new_worker(f"worker-dying-{attempt}")
    job = client.wait(job["id"], timeout_s=90)
    assert job["status"] == "failed"
    assert "base_64" in job["error"] and "3 attempts" in job["error"], job["error"]
    assert job["stages"][1]["status"] == "failed"

    # An operator retries it: fresh attempts (stopped by a cancel; finishing 1000 steps is not the point).
    retried = client.http.post(f"/v1/jobs/{job['id']}/retry").json()
    assert retried["status"] == "queued" and retried["error"] is None
    assert retried["stages"][1]["attempts"] == 0
    client.wait_stage(job["id"], "base_64", min_progress=0.001, timeout_s=90)
    client.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.wait(job["id"])["status"] == "canceled"


def test_a_job_whose_message_was_lost_after_dispatch_is_sent_again(system: System, client: Client) -> None:
    """A job on record as sent whose message no worker will ever see (a chain's next link or a retry that
    could not be published, a task that died before its claim) is sent again once it has been quiet for
    IMAGEN_STRANDED_AFTER_S: in the same generation, so a message that was only slow stays valid."""
    from core.job_input import GenerateSpec, stored_input
    from core.presets import StageParams, get_preset
    from core.redis_client import get_redis
    from core.routing import generate_stages
    from db import jobs as job_queries
    from db import tenants
    from db.session import session_scope
    from workers.sweeper import BROKER_MARKER_KEY

    # A sweep that finds the broker new re-sends every live job anyway: wait until that one has passed.
    wait_until(lambda: get_redis().exists(BROKER_MARKER_KEY), 30, "the first sweep")

    tiny = get_preset("tiny")
    spec = GenerateSpec(
        prompt="a corgi nobody sent",
        num_images=1,
        seed=41,
        resolution=64,
        stages=tiny.resolve_params(64, {"base_64": StageParams(2, 7.0)}),
    )
    token = client.http.headers["Authorization"].removeprefix("Bearer ")
    with session_scope() as session:
        key = tenants.find_api_key(session, key=token)
        assert key is not None
        job = job_queries.create_job(
            session,
            tenant_id=key.tenant_id,
            kind="generate",
            preset=tiny.name,
            input=stored_input(spec),
            stages=generate_stages(tiny, 64),
        )
        job.stages[0].queued_at = job.dispatched_at = job_queries.now()  # sent, as far as the row knows
        job_id = job.id

    done = client.wait(str(job_id), timeout_s=60)
    assert done["status"] == "succeeded", done
    assert [s["attempts"] for s in done["stages"]] == [1, 1]
    with session_scope() as session:
        row = job_queries.get_job(session, job_id=job_id)
        assert row is not None and row.dispatch_seq == 1, "sent again in its own generation"


def test_a_duplicate_message_never_runs_a_stage_that_is_running(
    system: System, client: Client, restore_worker: None
) -> None:
    """A second message for a running stage (the broker's redelivery after its visibility timeout, a resend)
    finds the stage's heartbeat fresh and leaves it to the worker that runs it."""
    from core.routing import BASE_TASK, TASK_QUEUES
    from workers.celery_app import app

    job = client.submit(seed=42, resolution=64, stages={"base": {"steps": 400}})
    client.wait_stage(job["id"], "base_64", min_progress=0.01, timeout_s=60)
    second = system.new_worker("worker-duplicate")
    try:
        wait_until(lambda: "ready" in second.log_tail(), 60, "the second worker to be ready")
        app.send_task(BASE_TASK, args=(job["id"], "base_64", 1), queue=TASK_QUEUES[BASE_TASK], ignore_result=True)
        wait_until(lambda: "imagen.base[" in second.log_tail(), 30, "the second worker to take the duplicate")
        done = client.wait(job["id"], timeout_s=180)
    finally:
        second.stop()
    assert done["status"] == "succeeded", done
    assert done["stages"][1]["attempts"] == 1, "the duplicate did not claim the running stage"


def test_a_postgres_outage_strands_no_job_and_clients_get_a_503(system: System, client: Client) -> None:
    """Postgres stops for a while under running jobs: clients get a 503 they may retry (never a 500 or a
    hang), and once it is back every job finishes; none is left queued or running."""
    jobs = [client.submit(seed=seed, resolution=64, stages={"base": {"steps": 30}}) for seed in (51, 52, 53)]
    client.wait_stage(jobs[0]["id"], "base_64", timeout_s=60)
    postgres = system.postgres
    postgres.stop()
    try:
        during = client.http.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "x"}}, timeout=15)
        assert during.status_code == 503, during.text
        assert during.json()["error"]["code"] == "unavailable" and during.headers["retry-after"] == "5"
        assert client.http.get(f"/v1/jobs/{jobs[1]['id']}", timeout=15).status_code == 503
        time.sleep(8)  # the workers run into the outage: claims, progress and heartbeats fail
    finally:
        postgres.ensure_postgres_running()
    for job in jobs:
        done = client.wait(job["id"], timeout_s=120)
        assert done["status"] == "succeeded", done
    wait_until(lambda: httpx.get(f"{system.api_url}/readyz", timeout=10).status_code == 200, 30, "readiness")


def test_an_object_store_outage_burns_no_attempt(system: System, client: Client, s3: Minio) -> None:
    """The store goes away for 15 s while a stage is about to write its images (as in a MinIO restart):
    the stage waits it out with backoff, and the retries are not counted as attempts, so the job succeeds
    with one attempt per stage and all its images stored."""
    job = client.submit(seed=61, resolution=256, stages={"base": {"steps": 20}, "sr256": {"steps": 3}})
    client.wait_stage(job["id"], "base_64", timeout_s=60)
    system.s3_proxy.down()
    try:
        time.sleep(15)
    finally:
        system.s3_proxy.up()
    done = client.wait(job["id"], timeout_s=180)
    assert done["status"] == "succeeded", done
    assert [s["attempts"] for s in done["stages"]] == [1, 1, 1]
    assert object_keys(s3, job["id"]) == sorted(
        [
            f"jobs/{job['id']}/text/embeds.safetensors",
            f"jobs/{job['id']}/base_64/0.png",
            f"jobs/{job['id']}/sr_256/0.png",
        ]
    )


def test_a_stage_past_its_time_limit_stops_and_fails_the_job_once_attempts_are_spent(
    system: System, client: Client, restore_worker: None
) -> None:
    """The solo pool ignores Celery's task time limit: the stage itself stops at its next step past the
    limit, is tried again, and the job fails with the reason once its three attempts are spent."""
    assert system.worker is not None
    system.worker.stop()
    system.worker = system.new_worker("worker-time-limit", env={"IMAGEN_STAGE_TIME_LIMIT_S": "3"})
    started = time.monotonic()
    job = client.submit(seed=9, resolution=64, stages={"base": {"steps": 1000}})
    job = client.wait(job["id"], timeout_s=120)
    assert job["status"] == "failed", job
    assert "base_64" in job["error"] and "3 attempts" in job["error"], job["error"]
    assert "time limit of 3 s" in job["error"], job["error"]
    base = job["stages"][1]
    assert base["status"] == "failed" and base["attempts"] == 3 and base["progress"] < 0.9, base
    assert time.monotonic() - started < 90
    system.worker.stop()
    system.worker = system.new_worker()


def test_a_stage_stuck_past_its_time_limit_takes_its_worker_down(system: System) -> None:
    """A stage that never reaches a step again cannot be stopped from inside: once the grace past its
    deadline is over, the heartbeat calls for the worker's exit (and beat until then, so that the sweeper
    does not send the stage elsewhere while it still runs here)."""
    import uuid

    from workers import lifecycle

    overran = threading.Event()
    deadline = time.monotonic()
    with lifecycle._heartbeat([uuid.uuid4()], deadline=deadline, grace_s=1.0, on_overrun=lambda _: overran.set()):
        assert not overran.wait(0.8), "called before the grace was over"
        assert overran.wait(2), "the overrun was not called"
        assert time.monotonic() - deadline < 1.5


def test_outputs_an_earlier_attempt_stored_are_recorded_not_written_again(
    system: System, client: Client, s3: Minio, restore_worker: None
) -> None:
    """A worker killed between writing a stage's images and the commit that records them leaves whole objects
    behind (writes are atomic); the next attempt records those instead of writing the key a second time."""
    import hashlib
    import io

    from PIL import Image

    assert system.worker is not None
    system.worker.stop()  # nobody consumes: the job waits while its "earlier attempt's" image is planted
    job = client.submit(seed=71, resolution=64, stages=FAST)
    planted = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(planted, format="PNG")
    key = f"jobs/{job['id']}/base_64/0.png"
    s3.put_object("imagen-test", key, io.BytesIO(planted.getvalue()), len(planted.getvalue()), content_type="image/png")

    system.worker = system.new_worker("worker-reuse")
    done = client.wait(job["id"], timeout_s=120)
    assert done["status"] == "succeeded", done
    stored = s3.get_object("imagen-test", key)
    try:
        assert stored.read() == planted.getvalue(), "the stage wrote its image over the one already stored"
    finally:
        stored.close()
        stored.release_conn()
    outputs = done["stages"][1]["outputs"]
    assert [(o["width"], o["height"], o["seed"]) for o in outputs] == [(64, 64, 71)]
    from sqlalchemy import select

    from db.models import Artifact
    from db.session import session_scope

    with session_scope() as session:
        sha = session.scalar(select(Artifact.sha256).where(Artifact.key == key))
    assert sha == hashlib.sha256(planted.getvalue()).hexdigest()
