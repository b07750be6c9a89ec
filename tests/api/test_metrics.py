"""GET /metrics: the families Prometheus scrapes, counted from the system's rows and queues."""

import httpx
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from cli.services import free_port
from tests.conftest import FAST, Client
from tests.servers import System, wait_until

FAMILIES = {
    "imagen_jobs_submitted": "counter",
    "imagen_jobs_finished": "counter",
    "imagen_jobs": "gauge",
    "imagen_stage_duration_seconds": "histogram",
    "imagen_stage_queue_wait_seconds": "histogram",
    "imagen_queue_depth": "gauge",
    "imagen_webhook_deliveries": "counter",
    "imagen_webhook_events_pending": "gauge",
    "imagen_model_load_seconds": "gauge",
    "imagen_worker_models_loaded": "gauge",
    "imagen_metrics_scrape_error": "gauge",
}


def _parse(exposition: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(exposition)}


def _scrape(system: System) -> dict[str, Metric]:
    response = httpx.get(f"{system.api_url}/metrics", timeout=10)  # no API key: Prometheus has none
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return _parse(response.text)


def _value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    """The sum of the samples called ``sample`` that carry ``labels`` (0 when there is none yet)."""
    return sum(
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _wait_idle(system: System) -> None:
    """Until no job of any tenant is queued or running, so the counters move only for this test's job."""

    def idle() -> bool:
        families = _scrape(system)
        return _value(families, "imagen_jobs", status="queued") + _value(families, "imagen_jobs", status="running") == 0

    wait_until(idle, 120, "every job to end", 0.5)


def test_metrics_exposes_every_family_without_a_key(system: System) -> None:
    families = _scrape(system)
    assert {name: families[name].type for name in FAMILIES if name in families} == FAMILIES
    errors = {s.labels["source"]: s.value for s in families["imagen_metrics_scrape_error"].samples}
    assert errors == {"database": 0, "redis": 0}
    queues = {s.labels["queue"] for s in families["imagen_queue_depth"].samples}
    assert {"text", "base", "sr", "caption", "embed", "webhooks", "control"} <= queues
    assert {s.labels["outcome"] for s in families["imagen_webhook_deliveries"].samples} >= {
        "delivered",
        "http_error",
        "error",
    }
    assert "/metrics" not in httpx.get(f"{system.api_url}/openapi.json").json()["paths"]


def test_counters_and_stage_histograms_move_by_one_per_job(system: System, client: Client) -> None:
    _wait_idle(system)
    stage = {"stage": "sr_256", "preset": "tiny"}
    before = _scrape(system)
    job = client.wait(client.submit(seed=1, resolution=256, stages=FAST)["id"])
    assert job["status"] == "succeeded", job
    after = _scrape(system)

    def moved(sample: str, **labels: str) -> float:
        return _value(after, sample, **labels) - _value(before, sample, **labels)

    assert moved("imagen_jobs_submitted_total", kind="generate") == 1
    assert moved("imagen_jobs_finished_total", kind="generate", status="succeeded") == 1
    assert moved("imagen_stage_duration_seconds_count", **stage) == 1
    assert moved("imagen_stage_duration_seconds_bucket", le="+Inf", **stage) == 1
    assert moved("imagen_stage_duration_seconds_sum", **stage) > 0
    assert moved("imagen_stage_queue_wait_seconds_count", stage="sr_256") == 1
    # A 1024 px stage did not run: the job stopped at 256 px.
    assert moved("imagen_stage_duration_seconds_count", stage="sr_1024", preset="tiny") == 0
    # The job is done, so nothing of it waits in a queue.
    assert _value(after, "imagen_queue_depth", queue="sr") == 0


def test_the_worker_publishes_each_model_it_loads_and_holds(system: System, client: Client) -> None:
    job = client.wait(client.submit(seed=2, resolution=64, stages=FAST)["id"])
    assert job["status"] == "succeeded", job
    scrape = _scrape(system)
    # A job to 64 px runs the text encoder and stage I: the worker loaded those parts, each on its own.
    loads = [s for s in scrape["imagen_model_load_seconds"].samples if s.labels["preset"] == "tiny"]
    assert {"text_encoder", "base_64"} <= {s.labels["model"] for s in loads}, loads
    assert all(s.value > 0 for s in loads), loads
    assert all(":" in s.labels["worker"] for s in loads)  # hostname:pid
    held = {
        (s.labels["worker"], s.labels["model"])
        for s in scrape["imagen_worker_models_loaded"].samples
        if s.labels["preset"] == "tiny" and s.value == 1
    }
    assert {(s.labels["worker"], s.labels["model"]) for s in loads} >= held
    assert {"text_encoder", "base_64"} <= {model for _, model in held}, held


def test_a_stopped_workers_models_are_no_longer_held(system: System) -> None:
    from core.model_loads import MODEL_LOADS_KEY, alive_key, model_load_field
    from core.redis_client import get_redis

    # A worker process that loaded a model, then died (its key expired): its load time stays on record.
    gone = "gone-host:4242"
    redis = get_redis()
    redis.hset(MODEL_LOADS_KEY, model_load_field(gone, "tiny", "base_64"), "1.5")
    redis.delete(alive_key(gone))
    try:
        scrape = _scrape(system)
        assert any(s.labels["worker"] == gone for s in scrape["imagen_model_load_seconds"].samples)
        assert not any(s.labels["worker"] == gone for s in scrape["imagen_worker_models_loaded"].samples)
        # Alive again: held again.
        redis.set(alive_key(gone), "1", ex=30)
        held = _scrape(system)["imagen_worker_models_loaded"].samples
        assert any(s.labels["worker"] == gone and s.labels["model"] == "base_64" for s in held)
    finally:
        redis.hdel(MODEL_LOADS_KEY, model_load_field(gone, "tiny", "base_64"))
        redis.delete(alive_key(gone))


def test_queue_depth_reads_the_lists_kombu_publishes_to(system: System) -> None:
    """Each priority of a queue is its own Redis list; a name that drifted from kombu's would read 0."""
    from api.metrics import _priority_lists
    from workers.celery_app import QUEUES, app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in QUEUES:
            assert set(_priority_lists(queue)) == {channel._q_for_pri(queue, p) for p in range(10)}


def test_an_unreachable_redis_is_flagged_not_fatal(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.metrics
    import core.metric_counts

    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    monkeypatch.setattr(api.metrics, "get_redis", lambda: dead)
    monkeypatch.setattr(core.metric_counts, "get_redis", lambda: dead)
    families = _parse(generate_latest(api.metrics.REGISTRY).decode())
    errors = {s.labels["source"]: s.value for s in families["imagen_metrics_scrape_error"].samples}
    assert errors == {"database": 0, "redis": 1}
    assert "imagen_queue_depth" not in families and "imagen_jobs_submitted" not in families
    assert families["imagen_jobs"].samples


def test_an_unreachable_database_is_flagged_not_fatal(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.metrics

    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    try:
        monkeypatch.setattr(api.metrics, "new_session", sessionmaker(engine, class_=Session))
        families = _parse(generate_latest(api.metrics.REGISTRY).decode())
    finally:
        engine.dispose()
    errors = {s.labels["source"]: s.value for s in families["imagen_metrics_scrape_error"].samples}
    assert errors == {"database": 1, "redis": 0}
    assert "imagen_jobs" not in families
    assert {s.labels["queue"] for s in families["imagen_queue_depth"].samples} >= {"sr"}


def test_a_histogram_counts_each_observation_in_its_bucket_and_above(system: System) -> None:
    import uuid

    from core.metric_counts import STAGE_DURATION_BUCKETS, StageObservation, count_events, read_counts

    stage = f"stage-{uuid.uuid4().hex[:6]}"
    count_events(
        stages=[
            StageObservation(stage, "tiny", 0.005, 2.0),  # the first bucket
            StageObservation(stage, "tiny", 0.3, None),  # le=0.5 and above; no queue wait known
            StageObservation(stage, "tiny", 700.0, 1.0),  # past the last bound: +Inf only
        ]
    )
    (row,) = [r for r in read_counts().stage_durations if r.labels == (stage, "tiny")]
    expected = tuple(int(b >= 0.005) + int(b >= 0.3) for b in STAGE_DURATION_BUCKETS)
    assert row.cumulative == expected and row.count == 3 and row.sum == pytest.approx(700.305)
    (wait,) = [r for r in read_counts().stage_queue_waits if r.labels == (stage,)]
    assert wait.count == 2 and wait.sum == pytest.approx(3.0)
