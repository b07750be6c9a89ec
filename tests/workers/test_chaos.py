"""The chaos run in small (see tests/chaos.py and bench/chaos.py): about 20 jobs in flight from several
tenants through two APIs, each with a webhook, while one fault after another hits the system. After
each, no job is lost, no stage's image is written twice, clients saw no 5xx other than 503, and every
webhook event reached the receiver once it was up.

The run has its own system (a webhook retry schedule that outlasts the receiver's outage, two APIs), so
the faults it injects leave the session's system alone.
"""

from collections.abc import Iterator

import pytest

from tests.chaos import ChaosConfig, ChaosRun, PhaseReport, format_table

CONFIG = ChaosConfig(
    jobs=12,
    in_flight=20,
    submit_span_s=3.0,
    tenants=3,
    model_workers=1,
    worker_kills=1,
    redis_down_s=2.0,
    postgres_down_s=4.0,
    store_down_s=5.0,
    webhook_down_s=4.0,
    fault_after_s=2.5,
    # Jobs wait in line longer than the session system's 3 s on a busy machine: resending each of them every
    # few seconds only slows the worker down.
    stranded_after_s=20.0,
    recover_timeout_s=150.0,
    hi_res_every=0,
)


@pytest.fixture(scope="module")
def chaos() -> Iterator[ChaosRun]:
    run = ChaosRun(CONFIG, log=lambda line: None)
    try:
        run.start()
        yield run
    finally:
        run.stop()
        if run.reports:
            print("\n" + format_table(run.reports))


def _assert_recovered(report: PhaseReport) -> None:
    assert report.misses() == [], f"{format_table([report])}\n" + "\n".join(report.details)
    assert report.submitted > 0 and report.succeeded == report.submitted, report.details
    assert report.stage_runs_duplicated == 0, report.details


@pytest.mark.parametrize(
    "fault", ["worker-kill", "redis-restart", "postgres-stop", "store-down", "webhook-down", "api-kill"]
)
def test_a_fault_under_load_loses_nothing_and_duplicates_nothing(chaos: ChaosRun, fault: str) -> None:
    _assert_recovered(chaos.run_phase(fault))
