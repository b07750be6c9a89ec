"""Keeps the embedded system's processes running: a child that exits is started again, with backoff.

A crashed API, worker or beat costs the time of its restart; `up` itself goes on, and stops every child
cleanly when it is interrupted.
"""

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Waits before restarting a child that keeps failing: 1, 2, 4, ... up to 30 s.
MAX_BACKOFF_S = 30.0
# A child that ran this long before it exited starts again at once: it was not failing on start.
HEALTHY_AFTER_S = 60.0


@dataclass
class Child:
    """One supervised process: ``imagen-queue <args>``, its output appended to ``logs/<name>.log``."""

    name: str
    args: Sequence[str]
    # Settings of this child's own, on top of the supervisor's environment.
    env: dict[str, str] = field(default_factory=dict)
    process: "subprocess.Popen[bytes] | None" = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Starts its children, restarts any that exits, and stops them all."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.children: list[Child] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        """Start ``imagen-queue <args>`` as the child called ``name``, with ``env`` added to the environment."""
        child = Child(name, args, dict(env or {}))
        self._spawn(child)
        self.children.append(child)
        return child

    def processes(self) -> list["subprocess.Popen[bytes]"]:
        """The children's current processes."""
        return [child.process for child in self.children if child.process is not None]

    def check(self) -> None:
        """Restart the children that exited, once their backoff has passed; call it every second or so."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if child.restart_at is None and process is not None and process.poll() is not None:
                ran_s = now - child.started_at
                child.exits.append(process.returncode)
                child.backoff_s = 0.0 if ran_s >= HEALTHY_AFTER_S else min(max(child.backoff_s * 2, 1.0), MAX_BACKOFF_S)
                child.restart_at = now + child.backoff_s
                log.error(
                    "%s exited with code %s after %.0f s; restarting it in %.0f s",
                    child.name,
                    process.returncode,
                    ran_s,
                    child.backoff_s,
                )
                print(f"imagen-queue up: {child.name} exited (code {process.returncode}); restarting it", flush=True)
            if child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.restarts += 1
                self._spawn(child)
                log.warning("%s restarted (restart %d)", child.name, child.restarts)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate every child, and kill those still running after ``timeout_s``."""
        for process in self.processes():
            if process.poll() is None:
                process.terminate()
        for process in self.processes():
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self, child: Child) -> None:
        with open(self.logs / f"{child.name}.log", "ab") as output:  # the child keeps its own descriptor
            child.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", *child.args],
                env={**self.env, **child.env},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        child.started_at = time.monotonic()
