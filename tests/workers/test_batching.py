"""Cross-job batching with the real worker: runs of one stage from several jobs share forward passes, and
each job still lives and dies on its own (a cancel, a poison input, a SIGKILL mid-batch).

Jobs are queued while no model worker runs, then one starts: its first run of each stage finds the other
jobs' runs waiting and takes them into its batch. Which runs shared a pass is read from the stage rows
(``batch_id``, ``batch_size``), not inferred from timings.
"""

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from minio import Minio

from tests.conftest import FAST, Client, object_keys
from tests.servers import System, wait_until

SLOW_SR = {"base": {"steps": 2}, "sr256": {"steps": 12}}


@pytest.fixture
def restore_worker(system: System) -> Iterator[None]:
    """Whatever a test does to the model worker, the next test finds the usual one running."""
    yield
    if system.worker is not None and system.worker.alive() and system.worker.name == "worker":
        return
    if system.worker is not None:
        system.worker.stop()
    system.worker = system.new_worker()


def _queued_while_no_worker_runs(system: System, client: Client, count: int, **input: Any) -> list[str]:
    assert system.worker is not None
    system.worker.stop()
    return [client.submit(f"a corgi number {i}", seed=10 + i, **input)["id"] for i in range(count)]


def _stage_rows(job_ids: list[str], stage: str) -> dict[str, dict[str, Any]]:
    from sqlalchemy import select

    from db.models import JobStage
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(JobStage.job_id, JobStage.status, JobStage.attempts, JobStage.batch_id, JobStage.batch_size).where(
                JobStage.job_id.in_([uuid.UUID(j) for j in job_ids]), JobStage.name == stage
            )
        )
        return {
            str(job_id): {"status": status, "attempts": attempts, "batch_id": batch_id, "batch_size": size}
            for job_id, status, attempts, batch_id, size in rows
        }


def _artifacts(job_id: str) -> list[tuple[str, int, str]]:
    from sqlalchemy import select

    from db.models import Artifact
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(Artifact.stage, Artifact.index, Artifact.sha256).where(Artifact.job_id == uuid.UUID(job_id))
        )
        return sorted((stage, index, sha) for stage, index, sha in rows)


def _shared_one_pass(rows: dict[str, dict[str, Any]]) -> bool:
    batches = {row["batch_id"] for row in rows.values()}
    return len(batches) == 1 and None not in batches and all(row["batch_size"] == len(rows) for row in rows.values())


def _models_loaded(log: str) -> set[str]:
    """The parts a worker's log says it loaded (``loaded base_64 of preset tiny on cpu ...``)."""
    return set(re.findall(r"loaded (\S+) of preset tiny", log))


def test_jobs_waiting_together_share_each_stages_forward_passes(
    system: System, client: Client, restore_worker: None
) -> None:
    jobs = _queued_while_no_worker_runs(system, client, 3, resolution=256, stages=FAST)
    system.worker = system.new_worker()
    for job_id in jobs:
        assert client.wait(job_id, timeout_s=180)["status"] == "succeeded"
    for stage in ("encode_text", "base_64", "sr_256"):
        rows = _stage_rows(jobs, stage)
        assert _shared_one_pass(rows), (stage, rows)
        # Each job kept its own claim: one attempt each, its own outputs at its own keys.
        assert all(row["attempts"] == 1 for row in rows.values()), rows
    for job_id in jobs:
        assert [(stage, index) for stage, index, _ in _artifacts(job_id)] == [
            ("base_64", 0),
            ("encode_text", 0),
            ("sr_256", 0),
        ]
    # Three prompts and seeds: three different images, none handed to another job.
    assert len({sha for job_id in jobs for stage, _, sha in _artifacts(job_id) if stage == "sr_256"}) == 3


def test_a_job_canceled_mid_batch_stops_and_the_others_succeed(
    system: System, client: Client, s3: Minio, restore_worker: None
) -> None:
    jobs = _queued_while_no_worker_runs(system, client, 3, resolution=256, stages=SLOW_SR)
    system.worker = system.new_worker()
    client.wait_stage(jobs[1], "sr_256", min_progress=0.05, timeout_s=180)
    assert client.http.post(f"/v1/jobs/{jobs[1]}/cancel").status_code == 200

    ended = {job_id: client.wait(job_id, timeout_s=180)["status"] for job_id in jobs}
    assert ended == {jobs[0]: "succeeded", jobs[1]: "canceled", jobs[2]: "succeeded"}
    rows = _stage_rows(jobs, "sr_256")
    assert _shared_one_pass(rows), rows
    assert rows[jobs[1]]["status"] == "canceled"
    # The canceled job's pass went on for the others; nothing of it was stored.
    assert not [key for key in object_keys(s3, jobs[1]) if "/sr_256/" in key]
    assert ("sr_256", 0) in {(stage, index) for stage, index, _ in _artifacts(jobs[0])}


def test_a_poison_job_fails_alone_and_stage_workers_hold_only_their_models(
    system: System, client: Client, s3: Minio, restore_worker: None
) -> None:
    from tests.api.test_metrics import _scrape

    jobs = _queued_while_no_worker_runs(system, client, 3, resolution=256, stages=FAST)
    # The prompts are encoded by a worker serving only the text queue...
    text_worker = system.worker = system.new_worker("text-worker", queues=["text"])
    wait_until(
        lambda: all(row["status"] == "succeeded" for row in _stage_rows(jobs, "encode_text").values()),
        120,
        "the prompts to be encoded",
    )
    text_worker.stop()
    # ...then one job's embeddings go bad in the store (as a corrupt object would).
    s3.put_object("imagen-test", f"jobs/{jobs[1]}/text/embeds.safetensors", _reader(b"not safetensors"), 15)

    # Stage I on a worker serving only the base queue: the batch fails, each half runs again, the bad job
    # fails alone.
    base_worker = system.worker = system.new_worker("base-worker", queues=["base"])
    wait_until(
        lambda: {row["status"] for row in _stage_rows(jobs, "base_64").values()} == {"succeeded", "failed"},
        120,
        "stage I to settle",
    )
    held = {
        s.labels["model"]
        for s in _scrape(system)["imagen_worker_models_loaded"].samples
        if s.labels["worker"].endswith(f":{base_worker.process.pid}")  # type: ignore[union-attr]
    }
    base_worker.stop()
    system.worker = system.new_worker()

    poisoned = client.wait(jobs[1], timeout_s=120)
    assert poisoned["status"] == "failed" and "base_64" in poisoned["error"], poisoned
    for job_id in (jobs[0], jobs[2]):
        assert client.wait(job_id, timeout_s=180)["status"] == "succeeded"
    base_rows = _stage_rows(jobs, "base_64")
    assert _shared_one_pass(base_rows), base_rows
    assert base_rows[jobs[0]]["attempts"] == base_rows[jobs[2]]["attempts"] == 1, base_rows

    # A text worker held the text encoder only, a base worker stage I only: neither touched the other's
    # models, nor the super-resolution stages.
    assert _models_loaded(text_worker.log_path.read_text()) == {"text_encoder"}
    assert _models_loaded(base_worker.log_path.read_text()) == {"base_64"}
    assert held == {"base_64"}, held


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
    system: System, client: Client, s3: Minio, restore_worker: None
) -> None:
    jobs = _queued_while_no_worker_runs(system, client, 3, resolution=256, stages=SLOW_SR)
    system.worker = system.new_worker()
    client.wait_stage(jobs[0], "sr_256", min_progress=0.05, timeout_s=180)
    rows = _stage_rows(jobs, "sr_256")
    assert _shared_one_pass(rows) and {row["status"] for row in rows.values()} == {"running"}, rows
    assert system.worker is not None
    system.worker.kill()  # SIGKILL mid-batch: no ack, no cleanup, three stages left running

    system.worker = system.new_worker("worker-2")
    for job_id in jobs:
        assert client.wait(job_id, timeout_s=240)["status"] == "succeeded"
    rows = _stage_rows(jobs, "sr_256")
    assert all(row["attempts"] == 2 for row in rows.values()), "the killed attempt and the one that finished"
    for job_id in jobs:
        assert object_keys(s3, job_id) == sorted(
            [f"jobs/{job_id}/text/embeds.safetensors", f"jobs/{job_id}/base_64/0.png", f"jobs/{job_id}/sr_256/0.png"]
        )
        assert [(stage, index) for stage, index, _ in _artifacts(job_id)] == [
            ("base_64", 0),
            ("encode_text", 0),
            ("sr_256", 0),
        ]


def test_with_batching_off_jobs_never_share_a_pass_and_keep_their_bytes(
    system: System, client: Client, restore_worker: None
) -> None:
    jobs = _queued_while_no_worker_runs(system, client, 2, resolution=64, stages=FAST)
    system.worker = system.new_worker("unbatched", env={"IMAGEN_MAX_BATCH": "1"})
    for job_id in jobs:
        assert client.wait(job_id, timeout_s=120)["status"] == "succeeded"
    rows = _stage_rows(jobs, "base_64")
    assert len({row["batch_id"] for row in rows.values()}) == 2 and {r["batch_size"] for r in rows.values()} == {1}
    # The first job again, alone: the same seed gives the same bytes.
    again = client.submit("a corgi number 0", seed=10, resolution=64, stages=FAST)["id"]
    assert client.wait(again, timeout_s=120)["status"] == "succeeded"
    assert [a for a in _artifacts(again) if a[0] == "base_64"] == [a for a in _artifacts(jobs[0]) if a[0] == "base_64"]


def _reader(data: bytes) -> Any:
    import io

    return io.BytesIO(data)
