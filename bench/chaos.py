"""Benchmark: faults one after another under load, and what users would notice of each.

Starts Postgres, Redis, an S3 server (behind a proxy that can be taken down), two API processes, model
workers (tiny preset), the CPU worker and beat as separate processes, and a webhook receiver in this
process. Several tenants keep jobs in flight through both APIs, each job with a webhook to the receiver,
while these faults hit the system one after another:

  worker-kill     SIGKILL of a model worker mid-stage, 3 times; a new one starts a second later
  redis-restart   Redis stopped and started again empty (it keeps nothing on disk here)
  postgres-stop   Postgres stopped for 15 s
  store-down      the object store unreachable for 30 s
  webhook-down    the webhook receiver down for 60 s
  api-kill        SIGKILL of one of the two API processes while clients submit (they fall back to the other)

After each fault it waits (at most --recover-timeout s) for every job of the phase to end and every
webhook event of those jobs to reach the receiver, then prints a row per fault: jobs submitted /
succeeded / failed / lost, stage runs and artifacts duplicated, 5xx and 503 answers clients saw, webhook
events missing or duplicated by webhook-id, and seconds to recover; see tests/chaos.py for how each is
counted. Targets, PASS or MISS per row: no job lost, no artifact duplicated or missing, no 5xx other than
503, every webhook event delivered once the receiver is back.

The receiver's 60 s outage outlasts the default webhook retry schedule of a test setup, so the run sets
IMAGEN_WEBHOOK_RETRY_SCHEDULE_S to a doubling schedule from 0.5 s (at most 30 s a step) whose total
outlasts the outage by half again (0.5, 1, 2, 4, 8, 16, 30, 30, 30 for 60 s). The sweeper runs every
second and re-sends a stage whose heartbeat is 4 s old (IMAGEN_SWEEP_INTERVAL_S, IMAGEN_REQUEUE_AFTER_S).

    python bench/chaos.py                      # ~100 jobs a phase; about 15-20 minutes on 2 cores
    python bench/chaos.py --quick              # 30 jobs a phase, shorter outages; about 5 minutes
    python bench/chaos.py --faults worker-kill,store-down --jobs 50

It stops everything it started when it ends, on Ctrl-C too. Exit status 1 if any target was missed.
"""

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, not an installed copy

from tests.chaos import ChaosConfig, ChaosRun, format_table

QUICK = {
    "jobs": 30,
    "in_flight": 30,
    "submit_span_s": 6.0,
    "model_workers": 1,
    "redis_down_s": 3.0,
    "postgres_down_s": 5.0,
    "store_down_s": 10.0,
    "webhook_down_s": 15.0,
    "recover_timeout_s": 150.0,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ChaosConfig()
    parser.add_argument("--quick", action="store_true", help="30 jobs a phase, outages of 3-15 s")
    parser.add_argument("--faults", default=",".join(defaults.faults), help="comma-separated, in order")
    parser.add_argument("--jobs", type=int, help=f"jobs per phase (default {defaults.jobs})")
    parser.add_argument("--in-flight", type=int, help=f"unfinished jobs at most (default {defaults.in_flight})")
    parser.add_argument("--tenants", type=int, help=f"default {defaults.tenants}")
    parser.add_argument("--model-workers", type=int, help=f"default {defaults.model_workers}")
    parser.add_argument("--worker-kills", type=int, help=f"default {defaults.worker_kills}")
    parser.add_argument("--postgres-down", type=float, help=f"seconds (default {defaults.postgres_down_s:.0f})")
    parser.add_argument("--store-down", type=float, help=f"seconds (default {defaults.store_down_s:.0f})")
    parser.add_argument("--webhook-down", type=float, help=f"seconds (default {defaults.webhook_down_s:.0f})")
    parser.add_argument("--recover-timeout", type=float, help=f"seconds (default {defaults.recover_timeout_s:.0f})")
    args = parser.parse_args()

    options: dict[str, object] = dict(QUICK) if args.quick else {}
    given = {
        "jobs": args.jobs,
        "in_flight": args.in_flight,
        "tenants": args.tenants,
        "model_workers": args.model_workers,
        "worker_kills": args.worker_kills,
        "postgres_down_s": args.postgres_down,
        "store_down_s": args.store_down,
        "webhook_down_s": args.webhook_down,
        "recover_timeout_s": args.recover_timeout,
    }
    options.update({name: value for name, value in given.items() if value is not None})
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in ChaosRun.FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(ChaosRun.FAULTS)}")
    config = ChaosConfig(**options, faults=faults)  # type: ignore[arg-type]

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    run = ChaosRun(config)
    started = time.monotonic()
    try:
        print(f"starting the system (logs in {run.system.logs}) ...", flush=True)
        run.start()
        print(f"ready in {time.monotonic() - started:.0f} s: {config}", flush=True)
        for fault in faults:
            run.run_phase(fault)
            print(format_table(run.reports[-1:]).splitlines()[-1], flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", flush=True)
    finally:
        run.stop()
    if run.reports:
        print()
        print(format_table(run.reports))
        print(f"\n{len(run.reports)} faults in {time.monotonic() - started:.0f} s")
    missed = not run.reports or any(report.misses() for report in run.reports)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
