"""Health checks of the compose services that answer no HTTP.

``python healthcheck.py beat``: healthy while beat's schedule file (``IMAGEN_DATA_DIR/celerybeat-schedule``,
under whatever suffix the dbm module gives it) was rewritten recently. Beat rewrites it after the first
task it sends once 3 minutes have passed since the last write, and it sends a sweep every
``IMAGEN_SWEEP_INTERVAL_S``: a beat that is stuck, or cannot reach Redis for long, stops rewriting it.
"""

import sys
import time

from core.config import get_settings

# Celery's PersistentScheduler.sync_every: the longest beat goes without rewriting its schedule while it runs.
BEAT_SYNC_EVERY_S = 180.0


def beat() -> int:
    settings = get_settings()
    files = list(settings.data_dir.glob("celerybeat-schedule*"))
    if not files:
        print(f"no schedule file in {settings.data_dir} yet")
        return 1
    age = time.time() - max(path.stat().st_mtime for path in files)
    limit = BEAT_SYNC_EVERY_S + 2 * settings.sweep_interval_s + 60
    if age > limit:
        print(f"beat's schedule was last written {age:.0f} s ago (more than {limit:.0f} s)")
        return 1
    print(f"beat's schedule was written {age:.0f} s ago")
    return 0


CHECKS = {"beat": beat}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        sys.exit(f"usage: healthcheck.py {{{','.join(CHECKS)}}}")
    sys.exit(CHECKS[sys.argv[1]]())
